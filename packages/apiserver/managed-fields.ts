/**
 * Field ownership (`metadata.managedFields`) and server-side apply, as Kubernetes'
 * structured-merge-diff does it, without schemas: list semantics come from the strategic-merge
 * table in patch.ts (keyed lists by merge key, `finalizers` as a set, every other list atomic).
 *
 * A field set is a set of paths; a path is a list of path elements in FieldsV1 spelling
 * (`f:name`, `k:{"name":"x"}`, `v:"value"`). The members of a value are its leaves (scalars,
 * atomic lists) and the items of keyed and set lists; maps themselves are not
 * members (nor are empty maps), so two managers can own different keys of one map.
 *
 * - An Apply makes the applied configuration's members the manager's set, merges the
 *   configuration over the live object, removes what the manager applied last time, left out
 *   now and nobody else owns, and refuses (409) to change a value another manager owns unless
 *   forced, which moves the field to the applier.
 * - Any other write (create, update, patch) gives its manager the members it added or changed,
 *   taking them from every other manager.
 * Entries are keyed by (manager, operation, subresource); status-subresource writes own only
 * `status`, and main-resource writes of kinds with a status subresource never own it.
 */
import { isObject, type Json, type JsonObject } from '@vessel/api';
import { ApiError, badRequest, invalid } from './errors.ts';
import { listMergeKey, isMergedPrimitiveList } from './patch.ts';

/** FieldsV1: a trie of path elements; `.` marks a member that also has members below it. */
export type FieldsV1 = { [element: string]: FieldsV1 };

export interface ManagedFieldsEntry {
  manager: string;
  operation: 'Apply' | 'Update';
  apiVersion: string;
  time: string;
  fieldsType: 'FieldsV1';
  fieldsV1: FieldsV1;
  subresource?: string;
}

/** What a write is, for ownership. */
export interface FieldWrite {
  manager: string;
  apiVersion: string;
  /** 'status' for writes through the status subresource. */
  subresource?: string;
  /** Whether the kind has a status subresource (main-resource writes then never own status). */
  statusSubresource: boolean;
}

/** The manager that owns what an object had before its first apply (objects older than ownership tracking). */
export const BEFORE_FIRST_APPLY = 'before-first-apply';

/** A set of paths, each kept as the JSON text of its element list (canonical, so prefix tests work). */
type FieldSet = Set<string>;
const enc = (path: string[]): string => JSON.stringify(path);
const dec = (key: string): string[] => JSON.parse(key) as string[];

// ---- list semantics ----

type ListKind = { kind: 'keyed'; key: string } | { kind: 'set' } | { kind: 'atomic' };

/** How a list under field `field` merges; a list that does not fit its declared kind is atomic. */
function listKind(field: string | undefined, list: Json[]): ListKind {
  if (field === undefined) return { kind: 'atomic' };
  const key = listMergeKey(field);
  if (key) {
    const seen = new Set<string>();
    for (const item of list) {
      if (!isObject<JsonObject>(item) || item[key] === undefined || isObject<JsonObject>(item[key]) || Array.isArray(item[key])) return { kind: 'atomic' };
      const pe = keyElement(key, item);
      if (seen.has(pe)) return { kind: 'atomic' };
      seen.add(pe);
    }
    return { kind: 'keyed', key };
  }
  if (isMergedPrimitiveList(field)) {
    const seen = new Set<string>();
    for (const item of list) {
      if (isObject<JsonObject>(item) || Array.isArray(item)) return { kind: 'atomic' };
      const pe = valueElement(item);
      if (seen.has(pe)) return { kind: 'atomic' };
      seen.add(pe);
    }
    return { kind: 'set' };
  }
  return { kind: 'atomic' };
}

const keyElement = (key: string, item: JsonObject): string => `k:${JSON.stringify({ [key]: item[key] })}`;
const valueElement = (item: Json): string => `v:${JSON.stringify(item)}`;

/** The child values of a value with their path elements and the field name lists below use. */
function children(value: Json, field: string | undefined): [string, Json, string | undefined][] | undefined {
  if (isObject<JsonObject>(value)) {
    const keys = Object.keys(value);
    return keys.length ? keys.map((k) => [`f:${k}`, value[k], k]) : undefined;
  }
  if (Array.isArray(value) && value.length) {
    const lk = listKind(field, value);
    if (lk.kind === 'keyed') return value.map((item) => [keyElement(lk.key, item as JsonObject), item, undefined]);
    if (lk.kind === 'set') return value.map((item) => [valueElement(item), item, undefined]);
  }
  return undefined;
}

/** Whether a value is a list item that is a member itself (keyed and set list items are). */
const isItemElement = (pe: string): boolean => pe.startsWith('k:') || pe.startsWith('v:');

/**
 * Walks carry a path as the inside of its JSON text (`"f:a","f:b"`; '' at the root), so each
 * step appends one encoded element instead of copying and re-encoding the whole path.
 */
const down = (inner: string, pe: string): string => (inner ? `${inner},${JSON.stringify(pe)}` : JSON.stringify(pe));
const pathKey = (inner: string): string => `[${inner}]`;

/** Adds the members of `value` at `path` to `out`. */
function addMembers(value: Json, field: string | undefined, path: string, out: FieldSet): void {
  const kids = children(value, field);
  // An empty map is no member: owning it would make its later keys conflict with its first writer.
  if (!kids) {
    if (path && !(isObject<JsonObject>(value) && !Object.keys(value).length)) out.add(pathKey(path));
    return;
  }
  for (const [pe, v, f] of kids) {
    const p = down(path, pe);
    if (isItemElement(pe)) out.add(pathKey(p));
    if (isItemElement(pe) && !isObject<JsonObject>(v)) continue;
    addMembers(v, f, p, out);
  }
}

/** The members of a whole object (what an Apply of it owns). */
export function membersOf(obj: JsonObject): FieldSet {
  const out: FieldSet = new Set();
  addMembers(obj, undefined, '', out);
  return out;
}

export interface Comparison {
  added: FieldSet;
  removed: FieldSet;
  modified: FieldSet;
}

/** The members `next` added, `prev` had and lost, and leaves whose value changed. */
export function compare(prev: Json | undefined, next: Json | undefined): Comparison {
  const c: Comparison = { added: new Set(), removed: new Set(), modified: new Set() };
  walkCompare(prev, next, undefined, '', c);
  for (const p of c.added)
    if (c.removed.delete(p)) {
      c.added.delete(p);
      c.modified.add(p);
    }
  return c;
}

function walkCompare(a: Json | undefined, b: Json | undefined, field: string | undefined, path: string, c: Comparison): void {
  if (a === undefined && b === undefined) return;
  if (a === undefined) {
    addMembers(b!, field, path, c.added);
    return;
  }
  if (b === undefined) {
    addMembers(a, field, path, c.removed);
    return;
  }
  const ka = children(a, field);
  const kb = children(b, field);
  const sameShape = isObject<JsonObject>(a) === isObject<JsonObject>(b) && Array.isArray(a) === Array.isArray(b);
  if (ka && kb && sameShape && (isObject<JsonObject>(a) || sameListKind(a, b, field))) {
    const mb = new Map(kb.map(([pe, v, f]) => [pe, [v, f] as const]));
    const seen = new Set<string>();
    for (const [pe, va, f] of ka) {
      seen.add(pe);
      const p = down(path, pe);
      const other = mb.get(pe);
      if (other === undefined) {
        if (isItemElement(pe)) c.removed.add(pathKey(p));
        if (!isItemElement(pe) || isObject<JsonObject>(va)) addMembers(va, f, p, c.removed);
        continue;
      }
      if (isItemElement(pe) && !isObject<JsonObject>(va) && !isObject<JsonObject>(other[0])) continue; // same set value
      if (isItemElement(pe) && (!isObject<JsonObject>(va) || !isObject<JsonObject>(other[0]))) {
        c.modified.add(pathKey(p));
        continue;
      }
      walkCompare(va, other[0], f, p, c);
    }
    for (const [pe, vb, f] of kb) {
      if (seen.has(pe)) continue;
      const p = down(path, pe);
      if (isItemElement(pe)) c.added.add(pathKey(p));
      if (!isItemElement(pe) || isObject<JsonObject>(vb)) addMembers(vb, f, p, c.added);
    }
    return;
  }
  if (!ka && !kb) {
    if (path && !sameJson(a, b)) c.modified.add(pathKey(path));
    return;
  }
  // The shape changed (e.g. a map became a string): everything below goes, the new value comes.
  addMembers(a, field, path, c.removed);
  addMembers(b, field, path, c.added);
}

/** Equality of two leaves (scalars, atomic lists, empty maps) without encoding scalars. */
function sameJson(a: Json, b: Json): boolean {
  if (typeof a !== 'object' || a === null || typeof b !== 'object' || b === null) return a === b;
  return JSON.stringify(a) === JSON.stringify(b);
}

function sameListKind(a: Json, b: Json, field: string | undefined): boolean {
  const la = listKind(field, a as Json[]);
  const lb = listKind(field, b as Json[]);
  return la.kind === lb.kind && (la.kind !== 'keyed' || (lb.kind === 'keyed' && la.key === lb.key));
}

// ---- FieldsV1 ----

/** A field set in FieldsV1 form. */
export function toFieldsV1(set: FieldSet): FieldsV1 {
  const root: FieldsV1 = {};
  const ends: FieldsV1[] = [];
  for (const p of set) {
    let node = root;
    for (const pe of dec(p)) node = node[pe] ??= {};
    ends.push(node);
  }
  // A member that has members below it carries `.`.
  for (const node of ends) if (Object.keys(node).length) node['.'] = {};
  return sortTrie(root);
}

function sortTrie(node: FieldsV1): FieldsV1 {
  const out: FieldsV1 = {};
  for (const k of Object.keys(node).sort()) out[k] = sortTrie(node[k]);
  return out;
}

/** Reads FieldsV1 back into a field set; throws a message on anything malformed. */
export function fromFieldsV1(trie: unknown): FieldSet {
  const out: FieldSet = new Set();
  const stack: [unknown, string[]][] = [[trie, []]];
  while (stack.length) {
    const [node, path] = stack.pop()!;
    if (!isObject<JsonObject>(node)) throw new Error(`fieldsV1 must be an object at ${pathString(path) || 'the root'}`);
    const keys = Object.keys(node);
    if (!keys.length && path.length) out.add(enc(path));
    for (const k of keys) {
      if (k === '.') {
        if (path.length) out.add(enc(path));
        continue;
      }
      if (!/^[fkvi]:/.test(k)) throw new Error(`unknown path element "${k}" in fieldsV1`);
      stack.push([node[k], [...path, k]]);
    }
  }
  return out;
}

/** A path as Kubernetes prints it in conflicts: `.spec.ports[port=80].name`, `.metadata.finalizers[="a"]`. */
export function pathString(path: string[]): string {
  return path
    .map((pe) => {
      const body = pe.slice(2);
      if (pe.startsWith('f:')) return `.${body}`;
      if (pe.startsWith('v:')) return `[=${body}]`;
      if (pe.startsWith('i:')) return `[${body}]`;
      try {
        const key = JSON.parse(body) as Record<string, Json>;
        return `[${Object.entries(key)
          .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
          .join(',')}]`;
      } catch {
        return `[${body}]`;
      }
    })
    .join('');
}

// ---- entries ----

interface Owner {
  manager: string;
  operation: 'Apply' | 'Update';
  subresource?: string;
  apiVersion: string;
  time: string;
  set: FieldSet;
}
const ownerKey = (o: { manager: string; operation: string; subresource?: string }) => JSON.stringify([o.manager, o.operation, o.subresource ?? '']);

/** The owners recorded on an object; throws 422 for entries a client sent that cannot be read. */
function ownersOf(entries: unknown, name: string, kind: string, group: string): Owner[] {
  if (entries === undefined || entries === null) return [];
  const bad = (i: number | undefined, message: string) =>
    invalid(kind, group, name, [{ reason: 'FieldValueInvalid', field: i === undefined ? 'metadata.managedFields' : `metadata.managedFields[${i}]`, message }]);
  if (!Array.isArray(entries)) throw bad(undefined, 'must be a list of ManagedFieldsEntry');
  return entries.map((e: unknown, i): Owner => {
    if (!isObject<JsonObject>(e)) throw bad(i, 'must be an object');
    const { manager, operation, apiVersion, time, fieldsType, fieldsV1, subresource } = e;
    if (typeof manager !== 'string') throw bad(i, 'manager must be a string');
    if (operation !== 'Apply' && operation !== 'Update') throw bad(i, 'operation must be Apply or Update');
    if (fieldsType !== undefined && fieldsType !== 'FieldsV1') throw bad(i, 'fieldsType must be FieldsV1');
    let set: FieldSet;
    try {
      set = fieldsV1 === undefined ? new Set() : fromFieldsV1(fieldsV1);
    } catch (err) {
      throw bad(i, (err as Error).message);
    }
    return {
      manager,
      operation,
      apiVersion: typeof apiVersion === 'string' ? apiVersion : '',
      time: typeof time === 'string' ? time : '',
      set,
      ...(typeof subresource === 'string' && subresource ? { subresource } : {}),
    };
  });
}

/** At most this many Update entries; older ones fold into `ancient-changes` (Kubernetes' cap). */
const MAX_UPDATE_MANAGERS = 10;
const ANCIENT_CHANGES = 'ancient-changes';

/** Keeps managedFields bounded whatever the number of user agents writing to an object. */
function capUpdateManagers(owners: Owner[]): Owner[] {
  const updates = owners.filter((o) => o.operation === 'Update' && o.set.size);
  if (updates.length <= MAX_UPDATE_MANAGERS) return owners;
  const oldest = updates
    .filter((o) => o.manager !== ANCIENT_CHANGES)
    .sort((a, b) => a.time.localeCompare(b.time))
    .slice(0, updates.length - MAX_UPDATE_MANAGERS + (updates.some((o) => o.manager === ANCIENT_CHANGES) ? 0 : 1));
  const ancient = owners.find((o) => o.manager === ANCIENT_CHANGES && o.operation === 'Update' && !o.subresource) ?? {
    manager: ANCIENT_CHANGES,
    operation: 'Update' as const,
    apiVersion: oldest[0].apiVersion,
    time: '',
    set: new Set<string>(),
  };
  ancient.set = union(ancient.set, ...oldest.map((o) => o.set));
  ancient.time = oldest.reduce((t, o) => (o.time > t ? o.time : t), ancient.time);
  return [...owners.filter((o) => !oldest.includes(o) && o !== ancient), ancient];
}

function toEntries(all: Owner[]): ManagedFieldsEntry[] {
  const owners = capUpdateManagers(all);
  // Kubernetes' order: Apply entries first, then by time, then by manager.
  const opRank = (o: Owner) => (o.operation === 'Apply' ? 0 : 1);
  return owners
    .filter((o) => o.set.size)
    .sort((a, b) => opRank(a) - opRank(b) || a.time.localeCompare(b.time) || a.manager.localeCompare(b.manager))
    .map((o) => ({
      manager: o.manager,
      operation: o.operation,
      apiVersion: o.apiVersion,
      time: o.time,
      fieldsType: 'FieldsV1' as const,
      fieldsV1: toFieldsV1(o.set),
      ...(o.subresource ? { subresource: o.subresource } : {}),
    }));
}

/** Metadata the server sets: nobody owns it (as Kubernetes strips it from every field set). */
const SERVER_PATHS = ['apiVersion', 'kind']
  .map((f) => [`f:${f}`])
  .concat(
    [
      'name',
      'namespace',
      'uid',
      'resourceVersion',
      'generation',
      'creationTimestamp',
      'selfLink',
      'managedFields',
      'deletionTimestamp',
      'deletionGracePeriodSeconds',
    ].map((f) => ['f:metadata', `f:${f}`]),
  );

const SERVER_KEYS = SERVER_PATHS.map(enc);
const STATUS_KEY = enc(['f:status']);
/** Whether `p` is the path `k` or below it (both encoded). */
const atOrBelow = (p: string, k: string): boolean => p === k || p.startsWith(`${k.slice(0, -1)},`);

/** Keeps the paths this write may own: status only through its subresource, no server metadata. */
function scope(set: FieldSet, w: FieldWrite): FieldSet {
  const out: FieldSet = new Set();
  for (const p of set) {
    if (SERVER_KEYS.some((k) => atOrBelow(p, k))) continue;
    const isStatus = atOrBelow(p, STATUS_KEY);
    if (w.subresource === 'status' ? !isStatus : w.statusSubresource && isStatus) continue;
    out.add(p);
  }
  return out;
}

const now = () => new Date().toISOString().replace(/\.\d+Z$/, 'Z');
const minus = (a: FieldSet, b: FieldSet): FieldSet => new Set([...a].filter((p) => !b.has(p)));
const union = (...sets: FieldSet[]): FieldSet => new Set(sets.flatMap((s) => [...s]));
const sameSet = (a: FieldSet, b: FieldSet) => a.size === b.size && [...a].every((p) => b.has(p));

/** Whether the set has `path` or anything below it. */
function coversOrBelow(set: FieldSet, k: string): boolean {
  if (set.has(k)) return true;
  for (const p of set) if (atOrBelow(p, k)) return true;
  return false;
}

interface Target {
  name: string;
  kind: string;
  group: string;
}

/**
 * Ownership after a non-apply write (create when `live` is undefined): the writer owns what it
 * added or changed, other managers lose it. `sent` is managedFields as the client sent them
 * (update/patch of the main resource): a list that differs from the live one replaces it, and
 * `[]` or `[{}]` clears it, as in Kubernetes; create ignores what was sent. As in Kubernetes,
 * an existing object nobody tracks yet (stored before ownership) stays untracked until its
 * first apply, which gives what it has to `before-first-apply`.
 */
export function updateManagedFields(live: JsonObject | undefined, next: JsonObject, w: FieldWrite, t: Target, sent?: unknown): ManagedFieldsEntry[] {
  let owners = ownersOf(liveEntries(live), t.name, t.kind, t.group);
  if (live && w.subresource !== 'status' && Array.isArray(sent) && JSON.stringify(sent) !== JSON.stringify(liveEntries(live) ?? [])) {
    const reset = sent.length === 0 || (sent.length === 1 && isObject<JsonObject>(sent[0]) && Object.keys(sent[0]).length === 0);
    owners = reset ? [] : ownersOf(sent, t.name, t.kind, t.group);
    if (reset) return [];
  }
  if (live && !owners.length) return [];
  const c = compare(live ? withoutManaged(live) : {}, withoutManaged(next));
  const changed = scope(union(c.added, c.modified), w);
  const removed = c.removed;
  for (const o of owners) o.set = minus(minus(o.set, changed), removed);
  const key = ownerKey({ manager: w.manager, operation: 'Update', subresource: w.subresource });
  let mine = owners.find((o) => ownerKey(o) === key);
  const set = union(minus(mine?.set ?? new Set(), removed), changed);
  if (!mine) {
    mine = { manager: w.manager, operation: 'Update', apiVersion: w.apiVersion, time: now(), set, ...(w.subresource ? { subresource: w.subresource } : {}) };
    owners.push(mine);
  } else if (!sameSet(mine.set, set) || changed.size) {
    mine.set = set;
    mine.time = now();
    mine.apiVersion = w.apiVersion;
  }
  return toEntries(owners);
}

/** The applied configuration as Apply sees it: nulls and server metadata dropped. */
export function cleanAppliedConfig(config: JsonObject): JsonObject {
  const out = dropNulls(config) as JsonObject;
  if (isObject<JsonObject>(out.metadata)) {
    const { managedFields: _m, resourceVersion: _r, ...meta } = out.metadata;
    out.metadata = meta;
  }
  return out;
}

function dropNulls(v: Json): Json | undefined {
  if (v === null) return undefined;
  if (Array.isArray(v)) return v.map((x) => dropNulls(x) ?? null);
  if (!isObject<JsonObject>(v)) return v;
  const out: JsonObject = {};
  for (const [k, x] of Object.entries(v)) {
    const d = dropNulls(x);
    if (d !== undefined) out[k] = d;
  }
  return out;
}

/** Merges an applied configuration over the live object: maps by key, keyed and set lists by item, the rest replaced. */
export function mergeApplied(live: Json | undefined, config: Json, field?: string): Json {
  if (isObject<JsonObject>(config)) {
    const out: JsonObject = isObject<JsonObject>(live) ? { ...live } : {};
    for (const [k, v] of Object.entries(config)) out[k] = mergeApplied(out[k], v, k);
    return out;
  }
  if (Array.isArray(config) && Array.isArray(live)) {
    const lc = listKind(field, config);
    const ll = listKind(field, live);
    if (lc.kind === 'keyed' && ll.kind === 'keyed' && lc.key === ll.key) {
      const out = [...live];
      for (const item of config as JsonObject[]) {
        const idx = out.findIndex((x) => keyElement(lc.key, x as JsonObject) === keyElement(lc.key, item));
        if (idx >= 0) out[idx] = mergeApplied(out[idx], item);
        else out.push(structuredClone(item));
      }
      return out;
    }
    if (lc.kind === 'set' && ll.kind === 'set') {
      const have = new Set(live.map(valueElement));
      return [...live, ...config.filter((x) => !have.has(valueElement(x)))];
    }
  }
  return typeof config === 'object' && config !== null ? structuredClone(config) : config;
}

/**
 * The object an Apply produces before validation: the configuration merged over the live
 * object, less what this manager applied before, left out now, and no other manager owns.
 */
export function applyToLive(live: JsonObject, config: JsonObject, w: FieldWrite, t: Target): JsonObject {
  const owners = applyOwners(live, t);
  const key = ownerKey({ manager: w.manager, operation: 'Apply', subresource: w.subresource });
  const last = owners.find((o) => ownerKey(o) === key)?.set ?? new Set<string>();
  const applied = scope(membersOf(config), w);
  const others = union(...owners.filter((o) => ownerKey(o) !== key).map((o) => o.set));
  const merged = mergeApplied(live, config) as JsonObject;
  // Deepest first, so an item's fields go before the item.
  const drop = [...minus(last, applied)]
    .filter((p) => !coversOrBelow(others, p))
    .map(dec)
    .filter((path) => !isKeyField(path))
    .sort((a, b) => b.length - a.length);
  for (const path of drop) removePath(merged, path);
  syncLastApplied(merged, config, w);
  return merged;
}

const LAST_APPLIED = 'kubectl.kubernetes.io/last-applied-configuration';
const LAST_APPLIED_PATH = enc(['f:metadata', 'f:annotations', `f:${LAST_APPLIED}`]);

/**
 * As Kubernetes does for `kubectl apply --server-side`: an object that also has a client-side
 * apply annotation gets it set to this configuration, so a later client-side apply diffs
 * against what was applied last. Other managers opt out by their name.
 */
function syncLastApplied(merged: JsonObject, config: JsonObject, w: FieldWrite): void {
  const annotations = isObject<JsonObject>(merged.metadata) && isObject<JsonObject>(merged.metadata.annotations) ? merged.metadata.annotations : undefined;
  if (w.manager !== 'kubectl' || w.subresource || typeof annotations?.[LAST_APPLIED] !== 'string' || !annotations[LAST_APPLIED]) return;
  const meta = isObject<JsonObject>(config.metadata) ? config.metadata : {};
  const { [LAST_APPLIED]: _old, ...rest } = isObject<JsonObject>(meta.annotations) ? meta.annotations : {};
  const value = JSON.stringify({ ...config, metadata: { ...meta, annotations: rest } }) + '\n';
  merged.metadata = { ...(merged.metadata as JsonObject), annotations: { ...annotations, [LAST_APPLIED]: value } };
}

/** Live owners, with everything owned by `before-first-apply` on an object that has no managedFields yet. */
function applyOwners(live: JsonObject, t: Target): Owner[] {
  const owners = ownersOf(liveEntries(live), t.name, t.kind, t.group);
  if (owners.length) return owners;
  const set = scope(membersOf(withoutManaged(live)), { manager: BEFORE_FIRST_APPLY, apiVersion: '', statusSubresource: false });
  return set.size ? [{ manager: BEFORE_FIRST_APPLY, operation: 'Update', apiVersion: String(live.apiVersion ?? ''), time: now(), set }] : [];
}

/**
 * Ownership after an Apply (`live` undefined when the apply creates the object): the applier
 * owns exactly the configuration's fields. A field another manager owns whose value the apply
 * changes is a conflict (409) unless `force`, which takes it from them. Values set the same
 * are shared. What `before-first-apply` owns never conflicts: it stands for writers unknown.
 */
export function applyManagedFields(
  live: JsonObject | undefined,
  next: JsonObject,
  config: JsonObject,
  w: FieldWrite,
  t: Target,
  force: boolean,
): ManagedFieldsEntry[] {
  const owners = live ? applyOwners(live, t) : [];
  const key = ownerKey({ manager: w.manager, operation: 'Apply', subresource: w.subresource });
  const applied = scope(membersOf(config), w);
  const c = compare(live ? withoutManaged(live) : {}, withoutManaged(next));
  const changed = union(c.added, c.modified);
  // The server rewrote the client-side apply annotation (syncLastApplied): no conflict over that.
  if (w.manager === 'kubectl') changed.delete(LAST_APPLIED_PATH);
  const conflicts: { owner: Owner; path: string[] }[] = [];
  for (const o of owners) {
    if (ownerKey(o) === key) continue;
    const taken = new Set([...o.set].filter((p) => changed.has(p)));
    if (!force && o.manager !== w.manager && o.manager !== BEFORE_FIRST_APPLY) for (const p of taken) conflicts.push({ owner: o, path: dec(p) });
    o.set = minus(minus(o.set, taken), c.removed);
  }
  if (conflicts.length) throw conflictError(conflicts, t);
  const mine = owners.find((o) => ownerKey(o) === key);
  if (!mine)
    owners.push({
      manager: w.manager,
      operation: 'Apply',
      apiVersion: w.apiVersion,
      time: now(),
      set: applied,
      ...(w.subresource ? { subresource: w.subresource } : {}),
    });
  else if (!sameSet(mine.set, applied) || changed.size) Object.assign(mine, { set: applied, time: now(), apiVersion: w.apiVersion });
  return toEntries(owners);
}

function conflictError(conflicts: { owner: Owner; path: string[] }[], t: Target): ApiError {
  const who = (o: Owner) =>
    `"${o.manager}"${o.subresource ? ` with subresource "${o.subresource}"` : ''}${o.operation === 'Update' ? ` using ${o.apiVersion}` : ''}`;
  const causes = conflicts.map((c) => ({ reason: 'FieldManagerConflict', message: `conflict with ${who(c.owner)}`, field: pathString(c.path) }));
  let message: string;
  if (conflicts.length === 1) message = `Apply failed with 1 conflict: conflict with ${who(conflicts[0].owner)}: ${pathString(conflicts[0].path)}`;
  else {
    const byOwner = new Map<string, string[]>();
    for (const c of conflicts) byOwner.set(who(c.owner), [...(byOwner.get(who(c.owner)) ?? []), pathString(c.path)]);
    const lines = [...byOwner.keys()].sort().flatMap((o) => [`conflicts with ${o}:`, ...byOwner.get(o)!.map((p) => `- ${p}`)]);
    message = `Apply failed with ${conflicts.length} conflicts: ${lines.join('\n')}`;
  }
  return new ApiError(409, 'Conflict', message, { name: t.name, group: t.group, kind: t.kind, causes });
}

function liveEntries(live: JsonObject | undefined): unknown {
  return isObject<JsonObject>(live?.metadata) ? live.metadata.managedFields : undefined;
}

function withoutManaged(obj: JsonObject): JsonObject {
  if (!isObject<JsonObject>(obj.metadata) || obj.metadata.managedFields === undefined) return obj;
  const { managedFields: _m, ...metadata } = obj.metadata;
  return { ...obj, metadata };
}

/** Whether the path is the key field of a keyed item (it goes only with the item). */
function isKeyField(path: string[]): boolean {
  const item = path[path.length - 2];
  const last = path[path.length - 1];
  if (!item?.startsWith('k:') || !last.startsWith('f:')) return false;
  return Object.hasOwn(JSON.parse(item.slice(2)) as object, last.slice(2));
}

/** Removes the value at `path`, and the maps or lists this leaves empty (metadata stays). */
function removePath(obj: JsonObject, path: string[]): void {
  const parents: Json[] = [obj];
  let cur: Json | undefined = obj;
  for (const pe of path.slice(0, -1)) {
    cur = step(cur, pe);
    if (cur === undefined) return;
    parents.push(cur);
  }
  for (let i = path.length - 1; i >= 0; i--) {
    const parent = parents[i];
    const pe = path[i];
    if (i < path.length - 1) {
      const child = step(parent, pe);
      const empty = (isObject<JsonObject>(child) && !Object.keys(child).length) || (Array.isArray(child) && !child.length);
      if (!empty || (i === 0 && pe === 'f:metadata')) return;
    }
    if (isObject<JsonObject>(parent) && pe.startsWith('f:')) delete parent[pe.slice(2)];
    else if (Array.isArray(parent)) {
      const idx = parent.findIndex((x) => itemMatches(x, pe));
      if (idx >= 0) parent.splice(idx, 1);
    }
  }
}

function step(v: Json | undefined, pe: string): Json | undefined {
  if (isObject<JsonObject>(v) && pe.startsWith('f:')) return v[pe.slice(2)];
  if (Array.isArray(v)) return v.find((x) => itemMatches(x, pe));
  return undefined;
}

function itemMatches(item: Json, pe: string): boolean {
  if (pe.startsWith('v:')) return valueElement(item) === pe;
  if (pe.startsWith('k:') && isObject<JsonObject>(item)) {
    const key = JSON.parse(pe.slice(2)) as JsonObject;
    return Object.entries(key).every(([k, v]) => JSON.stringify(item[k]) === JSON.stringify(v));
  }
  return false;
}

/** The manager of a write that names none: the user agent's product (`kubectl/v1.32 ...` → `kubectl`), as Kubernetes does. */
export function managerOf(fieldManager: string | undefined, userAgent: string | undefined): string {
  if (fieldManager !== undefined && fieldManager !== '') {
    if (fieldManager.length > 128) throw badRequest(`fieldManager "${fieldManager.slice(0, 32)}...": must be no more than 128 characters`);
    if (!/^[\x20-\x7e]+$/.test(fieldManager)) throw badRequest('fieldManager: must consist of printable characters');
    return fieldManager;
  }
  const product = (userAgent ?? '').split('/')[0].trim().slice(0, 128);
  return product || 'vessel-apiserver';
}
