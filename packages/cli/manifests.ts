/**
 * Reading manifests for `apply -f` and `delete -f`: a file, a directory of .yaml/.yml/.json
 * files, or `-` (stdin); multi-document YAML; `kind: List` expanded into its items. Every
 * object remembers where it came from so errors can say which file and document.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { ClientError, type KubeObject } from '@vessel/client';

export interface Manifest {
  /** File name ('-' for stdin). */
  source: string;
  /** 1-based document number within the source. */
  document: number;
  object: KubeObject;
}

const MANIFEST_FILE = /\.(ya?ml|json)$/i;

/** The objects in a text of one or more YAML (or JSON) documents. */
export function parseManifests(text: string, source: string): Manifest[] {
  const manifests: Manifest[] = [];
  const docs = parseAllDocuments(text);
  // parseAllDocuments returns an EmptyStream (not an array) for empty input.
  if (!Array.isArray(docs)) return manifests;
  docs.forEach((doc, i) => {
    const where = `${source} (document ${i + 1})`;
    if (doc.errors.length > 0) {
      throw new ClientError('BadManifest', `${where}: not valid YAML: ${doc.errors[0].message}`);
    }
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) return; // an empty document, e.g. after a trailing ---
    for (const object of expandList(value, where)) {
      checkObject(object, where);
      manifests.push({ source, document: i + 1, object });
    }
  });
  return manifests;
}

function expandList(value: unknown, where: string): KubeObject[] {
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new ClientError('BadManifest', `${where}: expected a Kubernetes object (a YAML mapping with apiVersion, kind and metadata)`);
  }
  const obj = value as KubeObject;
  if (obj.kind === 'List' || (typeof obj.kind === 'string' && obj.kind.endsWith('List') && Array.isArray(obj.items))) {
    return ((obj.items as unknown[]) ?? []).flatMap((item) => expandList(item, where));
  }
  return [obj];
}

function checkObject(obj: KubeObject, where: string): void {
  const missing = ['apiVersion', 'kind'].filter((f) => typeof obj[f] !== 'string' || obj[f] === '');
  if (!obj.metadata?.name) missing.push('metadata.name');
  if (missing.length > 0) throw new ClientError('BadManifest', `${where}: missing ${missing.join(', ')}`);
}

/** Reads `-f` arguments: files, directories (their manifest files, sorted; subdirectories with recursive) or '-'. */
export function readManifests(paths: string[], opts: { recursive?: boolean; readStdin?: () => string } = {}): Manifest[] {
  const manifests: Manifest[] = [];
  for (const path of paths) {
    if (path === '-') {
      manifests.push(...parseManifests((opts.readStdin ?? (() => readFileSync(0, 'utf8')))(), '-'));
      continue;
    }
    for (const file of manifestFiles(path, opts.recursive ?? false)) {
      manifests.push(...parseManifests(readFileSync(file, 'utf8'), file));
    }
  }
  return manifests;
}

function manifestFiles(path: string, recursive: boolean): string[] {
  let stat;
  try {
    stat = statSync(path);
  } catch {
    throw new ClientError('BadManifest', `the path "${path}" does not exist`);
  }
  if (!stat.isDirectory()) return [path];
  return readdirSync(path)
    .sort()
    .flatMap((entry) => {
      const full = join(path, entry);
      if (statSync(full).isDirectory()) return recursive ? manifestFiles(full, recursive) : [];
      return MANIFEST_FILE.test(entry) ? [full] : [];
    });
}
