/**
 * The four patch types Kubernetes clients send:
 * - JSON merge patch (RFC 7396): `kubectl patch --type merge`, `kubectl apply` for KubeVirt kinds;
 * - JSON patch (RFC 6902): `kubectl patch --type json`;
 * - strategic merge patch: `kubectl apply`/`patch` for core kinds. Vessel has no Go struct tags,
 *   so list merge keys come from a small table of the fields its kinds use (see MERGE_KEYS);
 *   lists not in the table are replaced, as merge patch does;
 * - apply patch (server-side apply): see managed-fields.ts, which merges the applied
 *   configuration with field ownership, using the list semantics of MERGE_KEYS.
 * Every patch body is checked for nesting deeper than MAX_NESTING_DEPTH before anything
 * recurses into it: the merges here, validation and JSON itself are recursive, and a body
 * 10,000 levels deep would overflow the stack (a 500) instead of being refused.
 */
import jsonpatch from 'fast-json-patch';
import YAML from 'yaml';
import { isObject, type Json, type JsonObject } from '@vessel/api';
import { ApiError, badRequest, unsupportedMediaType } from './errors.ts';

export function mergePatch(target: Json | undefined, patch: Json): Json {
  if (!isObject<JsonObject>(patch)) return patch;
  const out: JsonObject = isObject<JsonObject>(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** Merge keys of the list fields Vessel's kinds have, as in Kubernetes' patchMergeKey tags. */
const MERGE_KEYS: Record<string, string> = {
  ports: 'port',
  containers: 'name',
  initContainers: 'name',
  volumes: 'name',
  volumeMounts: 'name',
  env: 'name',
  conditions: 'type',
  ownerReferences: 'uid',
  imagePullSecrets: 'name',
  disks: 'name',
  interfaces: 'name',
  networks: 'name',
  dataVolumeTemplates: 'name',
};
/** Primitive lists that strategic merge unions instead of replacing. */
const MERGED_PRIMITIVE_LISTS = new Set(['finalizers']);

/** The merge key of the list field `field`, if it is a keyed list. */
export const listMergeKey = (field: string): string | undefined => (Object.hasOwn(MERGE_KEYS, field) ? MERGE_KEYS[field] : undefined);
/** Whether the primitive list field `field` is a set (merged, not replaced). */
export const isMergedPrimitiveList = (field: string): boolean => MERGED_PRIMITIVE_LISTS.has(field);

/**
 * How deep objects and patches may nest. Kubernetes' JSON decoder stops at 10,000; Vessel's
 * merges and validation recurse, so it stops at 1,000, far beyond any real object.
 */
export const MAX_NESTING_DEPTH = 1000;

/** A value nested deeper than MAX_NESTING_DEPTH; `field` is where (its first segments). */
export class NestingError extends Error {
  constructor(readonly field: string) {
    super(`must not be nested more than ${MAX_NESTING_DEPTH} levels deep`);
    this.name = 'NestingError';
  }
}

/**
 * Throws NestingError if `value` (found at `base`, `depth` levels down already) nests deeper
 * than the limit. Iterative, so it cannot overflow the stack itself.
 */
export function checkNesting(value: unknown, base: string[] = [], depth = 0): void {
  const stack: [unknown, number, string[]][] = [[value, depth, base]];
  while (stack.length) {
    const [v, d, path] = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (d >= MAX_NESTING_DEPTH) throw new NestingError(fieldPath(path));
    // Only the first segments of the path are kept: enough to name the field.
    const entries: [string, unknown][] = Array.isArray(v) ? v.map((x, i) => [`[${i}]`, x]) : Object.entries(v);
    for (const [k, x] of entries) stack.push([x, d + 1, path.length < 6 ? [...path, k] : path]);
  }
}

function fieldPath(path: string[]): string {
  return path.map((p, i) => (p.startsWith('[') || i === 0 ? p : `.${p}`)).join('') + (path.length >= 6 ? '...' : '');
}

/** A patch body's nesting: for JSON patch each operation's value counts from where its path points. */
function checkPatchNesting(type: PatchType, patch: Json): void {
  if (type !== 'json' || !Array.isArray(patch)) {
    checkNesting(patch);
    return;
  }
  patch.forEach((op, i) => {
    if (!isObject<JsonObject>(op)) return;
    const segments = typeof op.path === 'string' ? op.path.split('/').slice(1) : [];
    checkNesting(op, [`[${i}]`], 0);
    if (segments.length >= MAX_NESTING_DEPTH) throw new NestingError(`[${i}].path`);
    checkNesting(op.value, segments, segments.length);
  });
}

export function strategicMergePatch(target: Json | undefined, patch: Json): Json {
  if (!isObject<JsonObject>(patch)) return patch;
  if (patch.$patch === 'replace') {
    const { $patch: _, ...rest } = patch;
    return rest;
  }
  if (patch.$patch === 'delete') return null;
  const out: JsonObject = isObject<JsonObject>(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (k.startsWith('$setElementOrder/') || k === '$retainKeys' || k === '$patch') continue;
    if (k.startsWith('$deleteFromPrimitiveList/')) {
      const field = k.slice('$deleteFromPrimitiveList/'.length);
      const drop = new Set((Array.isArray(v) ? v : []).map((x) => JSON.stringify(x)));
      const cur = out[field];
      if (Array.isArray(cur)) out[field] = cur.filter((x) => !drop.has(JSON.stringify(x)));
      continue;
    }
    if (v === null) {
      delete out[k];
      continue;
    }
    const cur = out[k];
    if (Array.isArray(v) && Array.isArray(cur)) {
      const mergeKey = MERGE_KEYS[k];
      if (mergeKey && v.every(isObject) && cur.every(isObject)) {
        out[k] = mergeListByKey(cur as JsonObject[], v as JsonObject[], mergeKey);
        continue;
      }
      if (MERGED_PRIMITIVE_LISTS.has(k)) {
        const seen = new Set(cur.map((x) => JSON.stringify(x)));
        out[k] = [...cur, ...v.filter((x) => !seen.has(JSON.stringify(x)))];
        continue;
      }
    }
    const merged = strategicMergePatch(cur, v);
    if (merged === null) delete out[k];
    else out[k] = merged;
  }
  return out;
}

function mergeListByKey(cur: JsonObject[], patch: JsonObject[], key: string): JsonObject[] {
  const out = [...cur];
  for (const item of patch) {
    const idx = out.findIndex((c) => JSON.stringify(c[key]) === JSON.stringify(item[key]));
    if (item.$patch === 'delete') {
      if (idx >= 0) out.splice(idx, 1);
      continue;
    }
    if (idx >= 0) out[idx] = strategicMergePatch(out[idx], item) as JsonObject;
    else {
      const { $patch: _, ...rest } = item;
      out.push(rest);
    }
  }
  return out;
}

export function jsonPatch(target: Json, ops: Json): Json {
  if (!Array.isArray(ops)) throw badRequest('a JSON patch must be an array of operations, e.g. [{"op":"replace","path":"/spec/running","value":true}]');
  const err = jsonpatch.validate(ops as unknown as jsonpatch.Operation[], target);
  // A failed `test` operation is a precondition that did not hold (422, as Kubernetes answers).
  if (err?.name === 'TEST_OPERATION_FAILED')
    throw new ApiError(422, 'Invalid', `the server rejected our request due to an error in our request: test operation ${err.index} failed`);
  if (err) throw badRequest(`invalid JSON patch: ${err.name}: ${err.message.split('\n')[0]} (operation ${err.index})`);
  try {
    return jsonpatch.applyPatch(structuredClone(target), ops as unknown as jsonpatch.Operation[], false, true).newDocument as Json;
  } catch (e) {
    // `copy` and `move` can nest a document into itself until cloning it overflows.
    if (e instanceof RangeError) throw new NestingError('');
    throw badRequest(`invalid JSON patch: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`);
  }
}

export type PatchType = 'merge' | 'json' | 'strategic' | 'apply';

export function patchTypeOf(contentType: string | undefined): PatchType {
  const t = (contentType ?? '').split(';')[0].trim().toLowerCase();
  switch (t) {
    case 'application/merge-patch+json':
      return 'merge';
    case 'application/json-patch+json':
      return 'json';
    case 'application/strategic-merge-patch+json':
      return 'strategic';
    case 'application/apply-patch+yaml':
    case 'application/apply-patch+json':
      return 'apply';
    default:
      throw unsupportedMediaType(t || '(none)');
  }
}

/**
 * Parses a patch body (YAML for apply patches, JSON for the rest) and refuses excessive
 * nesting (NestingError) before anything recurses into it.
 */
export function parsePatchBody(type: PatchType, body: string): Json {
  let patch: Json;
  try {
    patch = (type === 'apply' ? parseYamlOrJson(body) : JSON.parse(body)) as Json;
  } catch (e) {
    // The YAML parser reports its own stack overflow as a parse error.
    if (e instanceof RangeError || (e instanceof Error && /Maximum call stack/.test(e.message))) throw new NestingError('');
    throw badRequest(`the patch body is not valid ${type === 'apply' ? 'YAML' : 'JSON'}: ${e instanceof Error ? e.message.split('\n')[0] : e}`);
  }
  checkPatchNesting(type, patch);
  return patch;
}

/** kubectl sends apply patches as JSON, which JSON.parse reads without recursing; the YAML parser recurses. */
function parseYamlOrJson(body: string): unknown {
  if (/^\s*[{[]/.test(body)) {
    try {
      return JSON.parse(body);
    } catch {
      /* YAML flow style, e.g. {a: 1} */
    }
  }
  return YAML.parse(body);
}

export function applyPatch(type: PatchType, target: Json, patch: Json): Json {
  switch (type) {
    case 'merge':
      if (!isObject<JsonObject>(patch)) throw badRequest('a merge patch must be a JSON object');
      return mergePatch(target, patch);
    case 'strategic':
      if (!isObject<JsonObject>(patch)) throw badRequest('a strategic merge patch must be a JSON object');
      return strategicMergePatch(target, patch);
    // Without field ownership; the API server applies through managed-fields.ts instead.
    case 'apply':
      if (!isObject<JsonObject>(patch)) throw badRequest('an apply patch must be an object');
      return mergePatch(target, patch);
    case 'json':
      return jsonPatch(target, patch);
  }
}
