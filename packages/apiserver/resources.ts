/**
 * The REST semantics of every kind, on top of the store: create, get, list, update, patch,
 * delete, with Kubernetes' rules for names, uids, generation, the status subresource,
 * optimistic concurrency, finalizers and dry runs. Validation happens before any write, so
 * an invalid request never changes stored state.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { applyDefaults, findByResource, isObject, validateObject } from '@vessel/api';
import type { JsonObject, KindInfo, KubeObject } from '@vessel/api';
import type { Store } from '@vessel/store';
import { isStoreError } from '@vessel/store';
import { ApiError, badRequest, conflict, forbidden, gone, invalid, notFound, toApiError } from './errors.ts';
import { apiVersionOf, decode, decodeAs, encode, encodeFor, listPrefix, objectKey, specOf, type StoredObject } from './objects.ts';
import { applyPatch, checkNesting, NestingError, parsePatchBody, type PatchType } from './patch.ts';
import { applyManagedFields, applyToLive, cleanAppliedConfig, managerOf, updateManagedFields, type FieldWrite } from './managed-fields.ts';
import { parseResourceVersion } from './query.ts';
import type { Matcher } from './selectors.ts';
import { dropTypeDependentFields, ServiceAllocator } from './services.ts';

export interface WriteOptions {
  dryRun?: boolean;
  fieldManager?: string;
  /** Server-side apply takes fields other managers own (`force=true`). */
  force?: boolean;
  /** Names the field manager when fieldManager is not given (its product, as Kubernetes does). */
  userAgent?: string;
  /** Unknown fields: Strict (Vessel's default) rejects them, Warn and Ignore drop them. */
  fieldValidation?: 'Strict' | 'Warn' | 'Ignore';
  /**
   * Checks on the object about to be stored that need the caller (see admission.ts); throws to
   * refuse. `current`: on an update, the stored object it replaces (undefined on create).
   */
  admit?: (obj: KubeObject, current?: KubeObject) => void | Promise<void>;
}
export interface Written {
  object: StoredObject;
  warnings: string[];
}

export interface ListQuery {
  labels?: Matcher;
  fields?: Matcher;
  limit?: number;
  continueToken?: string;
  /** List at this revision (resourceVersionMatch=Exact); a compacted one is 410 Expired. */
  revision?: number;
}
export interface ListPage {
  items: StoredObject[];
  revision: number;
  continueToken?: string;
}

export interface DeleteOptions {
  dryRun?: boolean;
  propagationPolicy?: 'Orphan' | 'Background' | 'Foreground';
  preconditions?: { uid?: string; resourceVersion?: string };
}

/** A delete either removed the object or marked it (finalizers still pending). */
export interface Deleted {
  object: StoredObject;
  pending: boolean;
}

const MAX_UPDATE_RETRIES = 16;
const NAME_SUFFIX_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789';

function generateSuffix(): string {
  return [...randomBytes(5)].map((b) => NAME_SUFFIX_ALPHABET[b % NAME_SUFFIX_ALPHABET.length]).join('');
}

/** Namespaces finalize through spec.finalizers ("kubernetes") as well as metadata.finalizers. */
function pendingFinalizers(obj: KubeObject): string[] {
  const spec = obj.spec as { finalizers?: string[] } | undefined;
  return [...(obj.metadata?.finalizers ?? []), ...(obj.kind === 'Namespace' ? (spec?.finalizers ?? []) : [])];
}

export interface ResourcesOptions {
  /** The range ClusterIPs come from (default 10.96.0.0/16). */
  serviceCidr?: string;
}

const isService = (info: KindInfo) => info.group === '' && info.kind === 'Service';

export class Resources {
  private readonly namespaces: KindInfo;
  /** ClusterIPs and NodePorts: allocated as a Service is written, released as it is deleted. */
  readonly services: ServiceAllocator;

  constructor(
    private readonly store: Store,
    opts: ResourcesOptions = {},
  ) {
    const ns = findByResource('', 'v1', 'namespaces');
    if (!ns) throw new Error('the Namespace kind is not registered');
    this.namespaces = ns;
    this.services = new ServiceAllocator(store, this, opts.serviceCidr);
  }

  async get(info: KindInfo, namespace: string | undefined, name: string): Promise<StoredObject> {
    const kv = await this.store.get(objectKey(info, namespace, name));
    if (!kv) throw notFound(info.plural, info.group, name);
    return decodeAs(info, kv);
  }

  async list(info: KindInfo, namespace: string | undefined, q: ListQuery): Promise<ListPage> {
    const prefix = listPrefix(info, namespace);
    let revision: number | undefined = q.revision;
    let startAfter: string | undefined;
    if (q.continueToken) ({ revision, startAfter } = parseContinue(q.continueToken, prefix));
    const limit = q.limit && q.limit > 0 ? q.limit : 0;
    const items: StoredObject[] = [];
    // Reads go page by page (at one revision) so no single store read is unbounded.
    const pageSize = limit ? Math.max(limit, 100) : 1000;
    let lastKey: string | undefined;
    for (;;) {
      let page;
      try {
        page = await this.store.list(prefix, { limit: pageSize, startAfter, revision });
      } catch (e) {
        if (isStoreError(e, 'Gone')) {
          throw gone(
            q.continueToken
              ? 'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.'
              : 'The resourceVersion for the provided list is too old.',
          );
        }
        throw e;
      }
      revision ??= page.revision;
      for (const kv of page.items) {
        const obj = decodeAs(info, kv);
        lastKey = kv.key;
        if ((q.labels && !q.labels(obj)) || (q.fields && !q.fields(obj))) continue;
        items.push(obj);
        if (limit && items.length === limit) {
          const more = page.more || kv !== page.items[page.items.length - 1];
          return { items, revision, continueToken: more ? makeContinue(revision, kv.key) : undefined };
        }
      }
      if (!page.more || page.items.length === 0) break;
      startAfter = lastKey;
    }
    return { items, revision: revision ?? (await this.store.currentRevision()) };
  }

  /** `applied`: the configuration, when a server-side apply creates the object. */
  async create(info: KindInfo, namespace: string | undefined, body: unknown, opts: WriteOptions = {}, applied?: JsonObject): Promise<Written> {
    const obj = this.checkBody(info, namespace, body);
    const meta = obj.metadata;
    if (!meta.name) {
      if (!meta.generateName) {
        throw invalid(info.kind, info.group, '', [{ reason: 'FieldValueRequired', field: 'metadata.name', message: 'name or generateName is required' }]);
      }
      meta.name = meta.generateName + generateSuffix();
    }
    // managedFields sent on create are dropped (Kubernetes would keep valid ones): the creator owns what it wrote.
    for (const f of ['uid', 'resourceVersion', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'managedFields'] as const) delete meta[f];
    if (info.statusSubresource) delete obj.status;
    const { causes, warnings } = validateObject(info, obj, 'create', undefined, validation(opts));
    if (causes.length) throw invalid(info.kind, info.group, meta.name, causes);
    applyDefaults(info, obj);
    await opts.admit?.(obj);
    if (info.kind === 'Namespace') {
      // As in Kubernetes: the namespace controller removes this once the namespace is empty.
      const spec = (obj.spec ?? {}) as { finalizers?: string[] };
      obj.spec = { ...spec, finalizers: spec.finalizers ?? ['kubernetes'] };
      obj.status = { phase: 'Active' };
    }
    meta.uid = randomUUID();
    meta.creationTimestamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    meta.generation = 1;
    if (info.namespaced) await this.requireActiveNamespace(namespace!);
    const w = fieldWrite(info, opts, undefined);
    const target = { name: meta.name, kind: info.kind, group: info.group };
    const managed = applied ? applyManagedFields(undefined, json(obj), applied, w, target, true) : updateManagedFields(undefined, json(obj), w, target);
    if (managed.length) meta.managedFields = managed;
    // Allocated last, once nothing else can refuse the object, and undone if the store does.
    // After managedFields, as in kube-apiserver: the allocated fields are no manager's.
    const allocation = isService(info) ? await this.services.allocate(obj, undefined, opts.dryRun) : undefined;
    if (opts.dryRun) return { object: obj, warnings };
    const key = objectKey(info, namespace, meta.name);
    try {
      return { object: decodeAs(info, await this.store.create(key, encodeFor(info, obj))), warnings };
    } catch (e) {
      await allocation?.rollback();
      throw toApiError(e, info.plural, info.group, meta.name);
    }
  }

  /** PUT: replace the object (or only its status, for the status subresource). */
  async update(
    info: KindInfo,
    namespace: string | undefined,
    name: string,
    body: unknown,
    subresource: string | undefined,
    opts: WriteOptions = {},
  ): Promise<Written> {
    const next = this.checkBody(info, namespace, body);
    if (next.metadata.name && next.metadata.name !== name) {
      throw badRequest(`the name of the object (${next.metadata.name}) does not match the name on the URL (${name})`);
    }
    // "" is no precondition (an unconditional update), as in Kubernetes.
    const wanted = next.metadata.resourceVersion || undefined;
    return this.guaranteedUpdate(info, namespace, name, wanted, opts, () => next, subresource);
  }

  async patch(
    info: KindInfo,
    namespace: string | undefined,
    name: string,
    type: PatchType,
    rawBody: string,
    subresource: string | undefined,
    opts: WriteOptions = {},
  ): Promise<Written> {
    try {
      return await this.patchOnce(info, namespace, name, type, rawBody, subresource, opts);
    } catch (e) {
      if (e instanceof NestingError)
        throw invalid(info.kind, info.group, name, [{ reason: 'FieldValueInvalid', field: e.field || '(patch)', message: e.message }]);
      throw e;
    }
  }

  private async patchOnce(
    info: KindInfo,
    namespace: string | undefined,
    name: string,
    type: PatchType,
    rawBody: string,
    subresource: string | undefined,
    opts: WriteOptions,
  ): Promise<Written> {
    const patch = parsePatchBody(type, rawBody);
    if (type === 'apply' && !opts.fieldManager) throw badRequest('PATCH with application/apply-patch+yaml requires the fieldManager query parameter');
    if (type !== 'apply' && opts.force) throw badRequest('force=true is only allowed for apply patches (application/apply-patch+yaml)');
    if (type === 'apply' && !isObject(patch)) throw badRequest('an apply patch must be an object');
    const wanted =
      isObject(patch) && isObject(patch.metadata) && typeof patch.metadata.resourceVersion === 'string' && patch.metadata.resourceVersion
        ? patch.metadata.resourceVersion
        : undefined;
    const config = type === 'apply' ? cleanAppliedConfig(patch as JsonObject) : undefined;
    const w = fieldWrite(info, opts, subresource);
    try {
      return await this.guaranteedUpdate(
        info,
        namespace,
        name,
        wanted,
        opts,
        (current) =>
          config
            ? applyToLive(json(current), config, w, { name, kind: info.kind, group: info.group })
            : (applyPatch(type, current as never, patch as never) as unknown),
        subresource,
        config && { config, force: opts.force ?? false },
      );
    } catch (e) {
      // Server-side apply creates what does not exist yet.
      if (config && e instanceof ApiError && e.code === 404 && !subresource) {
        // A copy: defaulting fills the created object in place, and defaults are nobody's.
        const body = structuredClone(config);
        return this.create(info, namespace, { ...body, metadata: { ...(body.metadata as object), name } }, opts, config);
      }
      throw e;
    }
  }

  async delete(info: KindInfo, namespace: string | undefined, name: string, options: DeleteOptions = {}): Promise<Deleted> {
    const key = objectKey(info, namespace, name);
    for (let attempt = 0; attempt < MAX_UPDATE_RETRIES; attempt++) {
      const current = await this.get(info, namespace, name);
      const meta = current.metadata;
      const pre = options.preconditions ?? {};
      if (pre.uid && pre.uid !== meta.uid) {
        throw new ApiError(409, 'Conflict', `Precondition failed: UID in precondition: ${pre.uid}, UID in object meta: ${meta.uid}`, {
          name,
          group: info.group,
          kind: info.plural,
        });
      }
      if (pre.resourceVersion) parseResourceVersion(pre.resourceVersion, 'preconditions.resourceVersion');
      if (pre.resourceVersion && pre.resourceVersion !== meta.resourceVersion) throw conflict(info.plural, info.group, name);
      const next = structuredClone(current);
      const finalizers = new Set(next.metadata.finalizers ?? []);
      if (options.propagationPolicy === 'Foreground') finalizers.add('foregroundDeletion');
      if (options.propagationPolicy === 'Orphan') finalizers.add('orphan');
      if (finalizers.size) next.metadata.finalizers = [...finalizers];
      if (info.kind === 'Namespace') next.status = { ...(next.status as object), phase: 'Terminating' };
      if (pendingFinalizers(next).length === 0) {
        if (options.dryRun) return { object: current, pending: false };
        try {
          const deleted = decodeAs(info, await this.store.delete(key, Number(meta.resourceVersion)));
          if (isService(info)) await this.releaseService(current);
          return { object: deleted, pending: false };
        } catch (e) {
          if (isStoreError(e, 'Conflict') && !pre.resourceVersion) continue;
          throw toApiError(e, info.plural, info.group, name);
        }
      }
      // Finalizers pending: mark the object; whoever removes the last finalizer deletes it.
      next.metadata.deletionTimestamp ??= new Date().toISOString().replace(/\.\d+Z$/, 'Z');
      next.metadata.deletionGracePeriodSeconds ??= 0;
      if (options.dryRun) return { object: next, pending: true };
      if (encode(next) === encode(current)) return { object: current, pending: true };
      try {
        return { object: decodeAs(info, await this.store.update(key, encodeFor(info, next), Number(meta.resourceVersion))), pending: true };
      } catch (e) {
        if (isStoreError(e, 'Conflict') && !pre.resourceVersion) continue;
        throw toApiError(e, info.plural, info.group, name);
      }
    }
    throw new ApiError(409, 'Conflict', `too many concurrent writes to ${info.plural} "${name}"; try again`);
  }

  /**
   * The read-modify-write loop behind PUT and PATCH: retries on concurrent writes unless the
   * client pinned a resourceVersion, in which case a mismatch is its 409.
   */
  private async guaranteedUpdate(
    info: KindInfo,
    namespace: string | undefined,
    name: string,
    wanted: string | undefined,
    opts: WriteOptions,
    change: (current: StoredObject) => unknown,
    subresource: string | undefined,
    apply?: { config: JsonObject; force: boolean },
  ): Promise<Written> {
    if (subresource && subresource !== 'status') throw notFound(`${info.plural}/${subresource}`, info.group, name);
    if (subresource === 'status' && !info.statusSubresource) throw notFound(`${info.plural}/status`, info.group, name);
    // A malformed precondition is the client's error (400), not a conflict with the stored object.
    if (wanted !== undefined) parseResourceVersion(wanted, 'metadata.resourceVersion');
    const key = objectKey(info, namespace, name);
    for (let attempt = 0; attempt < MAX_UPDATE_RETRIES; attempt++) {
      const current = await this.get(info, namespace, name);
      if (wanted !== undefined && wanted !== current.metadata.resourceVersion) throw conflict(info.plural, info.group, name);
      const changed = change(structuredClone(current));
      const next = this.checkBody(info, namespace, changed);
      const sentFields = next.metadata.managedFields;
      const merged = this.mergeUpdate(info, current, next, subresource);
      if (!subresource && isService(info)) dropTypeDependentFields(current, merged);
      const { causes, warnings } = validateObject(info, merged, 'update', current, {
        ...validation(opts),
        subresource: subresource === 'status' ? 'status' : undefined,
      });
      if (causes.length) throw invalid(info.kind, info.group, name, causes);
      if (!subresource) applyDefaults(info, merged);
      if (!subresource) await opts.admit?.(merged, current);
      // Before generation and managedFields: a PUT that leaves out the ClusterIP keeps it, and is no change.
      const allocation = !subresource && isService(info) ? await this.services.allocate(merged, current, opts.dryRun) : undefined;
      try {
        if (specOf(merged) !== specOf(current)) merged.metadata.generation = (current.metadata.generation ?? 1) + 1;
        const w = fieldWrite(info, opts, subresource);
        const target = { name, kind: info.kind, group: info.group };
        const managed = apply
          ? applyManagedFields(json(current), json(merged), apply.config, w, target, apply.force)
          : updateManagedFields(json(current), json(merged), w, target, sentFields);
        if (managed.length) merged.metadata.managedFields = managed;
        if (opts.dryRun) return { object: merged, warnings };
        if (encode(merged) === encode(current)) return { object: current, warnings };
        if (merged.metadata.deletionTimestamp && pendingFinalizers(merged).length === 0) {
          // The last finalizer is gone: the object goes with it.
          const kv = await this.store.delete(key, Number(current.metadata.resourceVersion));
          if (allocation) {
            await allocation.rollback();
            await this.releaseService(current);
          }
          return { object: { ...merged, metadata: { ...merged.metadata, resourceVersion: String(kv.modRevision) } }, warnings };
        }
        const written = decodeAs(info, await this.store.update(key, encodeFor(info, merged), Number(current.metadata.resourceVersion)));
        await allocation?.commit();
        return { object: written, warnings };
      } catch (e) {
        await allocation?.rollback();
        if (isStoreError(e, 'Conflict') && wanted === undefined) continue;
        throw toApiError(e, info.plural, info.group, name);
      }
    }
    throw new ApiError(409, 'Conflict', `too many concurrent writes to ${info.plural} "${name}"; try again`);
  }

  /** What an update may change: the status subresource only status; the main resource all but status. */
  private mergeUpdate(info: KindInfo, current: StoredObject, next: StoredObject, subresource: string | undefined): StoredObject {
    if (subresource === 'status') {
      const out = structuredClone(current);
      if (next.status === undefined) delete out.status;
      else out.status = next.status;
      return out;
    }
    const meta = { ...next.metadata };
    for (const f of ['uid', 'creationTimestamp', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'generation', 'namespace'] as const) {
      if (current.metadata[f] === undefined) delete meta[f];
      else (meta as Record<string, unknown>)[f] = current.metadata[f];
    }
    meta.name = current.metadata.name;
    delete meta.managedFields;
    if (current.metadata.deletionTimestamp) {
      // A terminating object may lose finalizers but gain none.
      const had = new Set(current.metadata.finalizers ?? []);
      const added = (meta.finalizers ?? []).filter((f) => !had.has(f));
      if (added.length) throw forbidden(`cannot add finalizers ${added.join(', ')} to ${info.plural} "${current.metadata.name}": it is being deleted`);
    }
    const out: StoredObject = { ...next, metadata: meta };
    if (info.statusSubresource) {
      if (current.status === undefined) delete out.status;
      else out.status = current.status;
    }
    if (info.kind === 'Namespace') out.status = current.status;
    return out;
  }

  /** Checks the envelope of a submitted object against the URL and fills apiVersion/kind/namespace. */
  private checkBody(info: KindInfo, namespace: string | undefined, body: unknown): StoredObject {
    if (!isObject(body)) throw badRequest(`the request body must be a ${info.kind} object`);
    const obj = body as KubeObject;
    try {
      // managedFields nest a few levels deeper than the fields they name: checked on their own.
      const { managedFields, ...rest } = isObject(obj.metadata) ? obj.metadata : {};
      checkNesting({ ...obj, metadata: rest });
      checkNesting(managedFields, ['metadata', 'managedFields']);
    } catch (e) {
      if (!(e instanceof NestingError)) throw e;
      throw invalid(info.kind, info.group, String(obj.metadata?.name ?? ''), [{ reason: 'FieldValueInvalid', field: e.field, message: e.message }]);
    }
    const apiVersion = apiVersionOf(info);
    if (obj.apiVersion !== undefined && obj.apiVersion !== apiVersion) {
      throw badRequest(`the API version in the data (${String(obj.apiVersion)}) does not match the expected API version (${apiVersion})`);
    }
    if (obj.kind !== undefined && obj.kind !== info.kind) {
      throw badRequest(`the kind in the data (${String(obj.kind)}) does not match the expected kind (${info.kind}) for ${info.plural}`);
    }
    if (obj.metadata !== undefined && !isObject(obj.metadata)) {
      throw invalid(info.kind, info.group, '', [{ reason: 'FieldValueInvalid', field: 'metadata', message: 'must be an object' }]);
    }
    const meta = { ...(obj.metadata ?? {}) } as StoredObject['metadata'];
    if (info.namespaced) {
      if (meta.namespace !== undefined && meta.namespace !== namespace) {
        throw badRequest(`the namespace of the provided object (${String(meta.namespace)}) does not match the namespace sent on the request (${namespace})`);
      }
      meta.namespace = namespace;
    } else {
      delete meta.namespace;
    }
    return { ...obj, apiVersion, kind: info.kind, metadata: meta };
  }

  /**
   * Frees a deleted Service's ClusterIP and NodePorts. The Service is gone whatever happens
   * here, so a failure is left to the allocator's repair rather than reported as the delete's.
   */
  private async releaseService(svc: StoredObject): Promise<void> {
    await this.services.release(svc).catch(() => undefined);
  }

  private async requireActiveNamespace(namespace: string): Promise<void> {
    const kv = await this.store.get(objectKey(this.namespaces, undefined, namespace));
    if (!kv) throw notFound('namespaces', '', namespace);
    if (decode(kv).metadata.deletionTimestamp) {
      throw forbidden(`unable to create new content in namespace ${namespace} because it is being terminated`);
    }
  }
}

/** Who a write is, for metadata.managedFields. */
function fieldWrite(info: KindInfo, opts: WriteOptions, subresource: string | undefined): FieldWrite {
  return {
    manager: managerOf(opts.fieldManager, opts.userAgent),
    apiVersion: apiVersionOf(info),
    subresource,
    statusSubresource: !!info.statusSubresource || info.kind === 'Namespace',
  };
}

const json = (obj: KubeObject): JsonObject => obj as unknown as JsonObject;

function validation(opts: WriteOptions) {
  const mode = opts.fieldValidation ?? 'Strict';
  return { fieldValidation: mode, pruneUnknown: mode !== 'Strict' };
}

function makeContinue(revision: number, key: string): string {
  return Buffer.from(JSON.stringify({ v: 1, rv: revision, start: key })).toString('base64url');
}

function parseContinue(token: string, prefix: string): { revision: number; startAfter: string } {
  try {
    const c = JSON.parse(Buffer.from(token, 'base64url').toString()) as { v: number; rv: number; start: string };
    if (c.v === 1 && Number.isInteger(c.rv) && typeof c.start === 'string' && c.start.startsWith(prefix)) {
      return { revision: c.rv, startAfter: c.start };
    }
  } catch {
    /* reported below */
  }
  throw badRequest('invalid value for continue: it must be the metadata.continue of a previous list of the same resource');
}
