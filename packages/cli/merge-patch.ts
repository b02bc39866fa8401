/**
 * The three-way JSON merge patch `apply` sends, as kubectl computes it for custom resources:
 * fields the last applied manifest had and the new one drops are deleted (null); fields the
 * new manifest sets to something other than the live value are set. Fields nobody declared
 * (controllers' finalizers, labels, defaults, status) are left alone, which a PUT of the
 * manifest would wipe out. Lists are replaced whole, as JSON merge patch does.
 */
import { isObject, type JsonObject } from '@vessel/api';

type JsonMap = JsonObject;

const isMap = (v: unknown): v is JsonMap => isObject(v);

export function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]));
  if (isMap(a) && isMap(b)) {
    const ka = Object.keys(a),
      kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && deepEqual(a[k], b[k]));
  }
  return false;
}

/** null for every field `original` has and `modified` does not (recursively through mappings). */
function deletions(original: JsonMap, modified: JsonMap): JsonMap {
  const patch: JsonMap = {};
  for (const key of Object.keys(original)) {
    if (!Object.hasOwn(modified, key)) {
      patch[key] = null;
    } else if (isMap(original[key]) && isMap(modified[key])) {
      const nested = deletions(original[key] as JsonMap, modified[key] as JsonMap);
      if (Object.keys(nested).length > 0) patch[key] = nested;
    }
  }
  return patch;
}

/** The fields of `modified` that differ from `current`; fields only `current` has are ignored. */
function changes(current: JsonMap, modified: JsonMap): JsonMap {
  const patch: JsonMap = {};
  for (const [key, want] of Object.entries(modified)) {
    const have = current[key];
    if (want === null) {
      if (have !== undefined && have !== null) patch[key] = null; // an explicit null deletes
    } else if (isMap(want) && isMap(have)) {
      const nested = changes(have, want);
      if (Object.keys(nested).length > 0) patch[key] = nested;
    } else if (!deepEqual(have, want)) {
      patch[key] = want;
    }
  }
  return patch;
}

function merge(a: JsonMap, b: JsonMap): JsonMap {
  const out: JsonMap = { ...a };
  for (const [key, value] of Object.entries(b)) {
    out[key] = isMap(out[key]) && isMap(value) ? merge(out[key] as JsonMap, value) : value;
  }
  return out;
}

/**
 * The merge patch taking `current` (live) to `modified` (the manifest), deleting what
 * `original` (the previously applied manifest, {} if unknown) had and `modified` dropped.
 * An empty object means nothing to change.
 */
export function threeWayMergePatch(original: JsonMap, modified: JsonMap, current: JsonMap): JsonMap {
  const removed = deletions(original, modified);
  // A field deleted from the manifest that is already gone from the live object needs no patch.
  const needed = prune(removed, current);
  return merge(needed, changes(current, modified));
}

function prune(removed: JsonMap, current: JsonMap): JsonMap {
  const out: JsonMap = {};
  for (const [key, value] of Object.entries(removed)) {
    if (!Object.hasOwn(current, key)) continue;
    if (isMap(value)) {
      const nested = isMap(current[key]) ? prune(value, current[key] as JsonMap) : {};
      if (Object.keys(nested).length > 0) out[key] = nested;
    } else {
      out[key] = value;
    }
  }
  return out;
}

export function isEmptyPatch(patch: JsonMap): boolean {
  return Object.keys(patch).length === 0;
}
