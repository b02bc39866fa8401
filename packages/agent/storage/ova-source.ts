/**
 * A disk of an OVA package read in place (issue 14, docs/forklift.md "How OVA disks are read"):
 * Forklift's migration marks its upload DataVolume with the package and the member holding the
 * disk (storage.OVA_SOURCE); an agent whose `--ova-root` holds the package converts the member
 * straight from the archive (qemu-img over a raw offset/size window) instead of waiting for the
 * bytes to be uploaded. The annotation is any tenant's input, so only a package under one of the
 * agent's OVA roots is read, and the member's offset and size come from the archive's own tar
 * headers (walked and checked as the inventory does), never from the object; the digest comes
 * from the package's own manifest.
 */
import { lstat, open, realpath } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, sep } from 'node:path';
import { ova } from '@vessel/api';
import { ImportError } from './errors.ts';

/** Where a disk's bytes are, and the digest the package's manifest gives for them (if any). */
export interface OvaMemberRange {
  path: string;
  offset: number;
  size: number;
  digest?: ova.Digest;
}

/** The parsed annotation: the package (absolute path on the node) and the member's name in it. */
export interface OvaSourceRef {
  package: string;
  member: string;
}

/** The annotation's value parsed; undefined when it is absent or not `{"package": "/abs", "member": "name"}`. */
export function parseOvaSource(value: string | undefined): OvaSourceRef | undefined {
  if (!value) return undefined;
  try {
    const v = JSON.parse(value) as Record<string, unknown>;
    if (typeof v.package === 'string' && isAbsolute(v.package) && typeof v.member === 'string' && v.member) return { package: v.package, member: v.member };
  } catch {
    // not JSON: ignored, as if absent
  }
  return undefined;
}

/** The package's real path when it is under one of `roots` (symlinks resolved); undefined otherwise. */
export async function underRoots(path: string, roots: readonly string[]): Promise<string | undefined> {
  const real = await realpath(path).catch(() => undefined);
  if (!real) return undefined;
  for (const r of roots) {
    const root = await realpath(r).catch(() => undefined);
    if (root && real.startsWith(root.endsWith(sep) ? root : root + sep)) return real;
  }
  return undefined;
}

const refused = (e: unknown): never => {
  if (e instanceof ova.OvaError)
    throw new ImportError(e.code === 'ManifestMismatch' ? 'ChecksumMismatch' : 'Corrupt', `the OVA package is refused (${e.code}): ${e.message}`, { cause: e });
  throw e;
};

async function readText(path: string, offset: number, size: number, max: number, what: string): Promise<string> {
  if (size > max) throw new ova.OvaError('OversizeEntry', `${what} is ${size} bytes, more than the ${max} allowed`);
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(size);
    await fh.read(buf, 0, size, offset);
    return buf.toString('utf8');
  } finally {
    await fh.close();
  }
}

/**
 * Finds `member` of the package `real` (an `.ova` archive or an `.ovf` with its files beside it,
 * already checked to be under the roots): its byte range and its manifest digest. ImportError
 * (Corrupt, ChecksumMismatch, InvalidArgument) when the package or member is refused.
 */
export async function resolveOvaMember(real: string, member: string, limits?: ova.OvaLimits): Promise<OvaMemberRange> {
  const lim = ova.limitsOf(limits);
  try {
    const name = ova.safeMemberName(member);
    if (real.endsWith('.ova')) {
      const st = await lstat(real);
      if (!st.isFile()) throw new ova.OvaError('LinkNotAllowed', 'the package is not a regular file');
      const fh = await open(real, 'r');
      let entries: ova.TarEntry[];
      try {
        entries = await ova.readTar(fh, st.size, lim);
      } finally {
        await fh.close();
      }
      const e = entries.find((x) => x.name === name);
      if (!e) throw new ova.OvaError('FileNotFound', `"${name}" is not in the package`);
      if (e.size > lim.maxDiskBytes) throw new ova.OvaError('OversizeEntry', `"${name}" is ${e.size} bytes, more than the ${lim.maxDiskBytes} allowed`);
      const ovfs = entries.filter((x) => x.name.endsWith('.ovf'));
      const mf = ovfs.length === 1 ? entries.find((x) => x.name === ovfs[0].name.replace(/\.ovf$/, '.mf')) : undefined;
      const digest = mf ? ova.parseManifest(await readText(real, mf.offset, mf.size, lim.maxDescriptorBytes, mf.name)).get(name) : undefined;
      return { path: real, offset: e.offset, size: e.size, ...(digest ? { digest } : {}) };
    }
    if (!real.endsWith('.ovf')) throw new ova.OvaError('FileNotFound', 'the package is neither an .ova nor an .ovf');
    const dir = dirname(real);
    const file = await realpath(join(dir, name)).catch(() => undefined);
    if (!file) throw new ova.OvaError('FileNotFound', `"${name}" is missing beside the OVF`);
    const rel = relative(dir, file);
    if (rel.startsWith('..') || isAbsolute(rel)) throw new ova.OvaError('PathTraversal', `"${name}" resolves outside the OVF's directory`);
    const st = await lstat(join(dir, name));
    if (!st.isFile()) throw new ova.OvaError('LinkNotAllowed', `"${name}" is not a regular file`);
    if (st.size > lim.maxDiskBytes) throw new ova.OvaError('OversizeEntry', `"${name}" is ${st.size} bytes, more than the ${lim.maxDiskBytes} allowed`);
    const mfPath = join(dir, basename(real).replace(/\.ovf$/, '.mf'));
    const mfSt = await lstat(mfPath).catch(() => undefined);
    const digest = mfSt?.isFile() ? ova.parseManifest(await readText(mfPath, 0, mfSt.size, lim.maxDescriptorBytes, basename(mfPath))).get(name) : undefined;
    return { path: file, offset: 0, size: st.size, ...(digest ? { digest } : {}) };
  } catch (e) {
    return refused(e);
  }
}
