/**
 * How API objects are kept in the store: the key layout Kubernetes uses, JSON values, and
 * `metadata.resourceVersion` taken from the store revision on every read (never stored). A kind
 * served at several versions is stored at one (its storage version) and converted on the way
 * in and out (decodeAs, encodeFor), so a key holds one object whatever version wrote it.
 */
import { convertTo, convertToStorage } from '@vessel/api';
import type { KindInfo, KubeObject, ObjectMeta } from '@vessel/api';
import type { KV } from '@vessel/store';

export function apiVersionOf(info: KindInfo): string {
  return info.group ? `${info.group}/${info.version}` : info.version;
}

/** `/registry/<group|core>/<plural>/` : the prefix of every object of a kind. */
export function kindPrefix(info: KindInfo): string {
  return `/registry/${info.group || 'core'}/${info.plural}/`;
}

/** The prefix of a list: all objects of the kind, or those in one namespace. */
export function listPrefix(info: KindInfo, namespace: string | undefined): string {
  return info.namespaced && namespace ? `${kindPrefix(info)}${namespace}/` : kindPrefix(info);
}

export function objectKey(info: KindInfo, namespace: string | undefined, name: string): string {
  return info.namespaced ? `${kindPrefix(info)}${namespace}/${name}` : `${kindPrefix(info)}${name}`;
}

export interface StoredObject extends KubeObject {
  metadata: ObjectMeta & { name: string };
}

export function decode(kv: KV): StoredObject {
  const obj = JSON.parse(kv.value) as StoredObject;
  obj.metadata.resourceVersion = String(kv.modRevision);
  return obj;
}

/** A stored object as `info`'s version. */
export function decodeAs(info: KindInfo, kv: KV): StoredObject {
  return asVersion(info, decode(kv));
}

/** An object (read at any served version) as `info`'s version. */
export function asVersion(info: KindInfo, obj: StoredObject): StoredObject {
  return convertTo(info, obj) as StoredObject;
}

/** An object at `info`'s version, encoded for the store at the kind's storage version. */
export function encodeFor(info: KindInfo, obj: KubeObject): string {
  return encode(convertToStorage(info, obj));
}

export function encode(obj: KubeObject): string {
  const { resourceVersion: _rv, ...metadata } = obj.metadata ?? {};
  return JSON.stringify({ ...obj, metadata });
}

/** Everything but metadata and status: a change there bumps `metadata.generation`. */
export function specOf(obj: KubeObject): string {
  const { metadata: _m, status: _s, ...rest } = obj;
  return JSON.stringify(rest);
}
