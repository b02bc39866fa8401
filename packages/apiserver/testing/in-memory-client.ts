/**
 * Test-only: a `Client` (@vessel/client) that calls the real `Resources` over a SQLite
 * `:memory:` store in-process, so controllers can be unit-tested in milliseconds with the API
 * server's real semantics (validation, defaulting, resourceVersion conflicts, the status
 * subresource, finalizers, preconditions) and no HTTP. It fakes no answers: every call is the
 * same `Resources` call the HTTP server makes; only admission (auth, agent checks) is absent.
 *
 * It lives in packages/apiserver because it needs `Resources` (exported as `@vessel/apiserver/testing`); production code in
 * packages/controllers never imports it (only *.test.ts files do), so the runtime layering
 * controllers → client → HTTP → apiserver stays as it is.
 *
 * Every write (create, update, patch, delete, on any object or subresource) is counted in
 * `writes`, for the "API writes per VM start" figure.
 */
import { findByResource, type KindInfo } from '@vessel/api';
import {
  Client,
  ClientError,
  StatusError,
  type DeleteOptions,
  type KubeList,
  type KubeObject,
  type ListOptions,
  type NamespaceOption,
  type PatchOptions,
  type ResourceRef,
  type Status,
  type Watch,
  type WatchEvent,
  type WatchOptions,
} from '@vessel/client';
import { SqliteStore, type Store } from '@vessel/store';
import { ApiError } from '../errors.ts';
import { asVersion, listPrefix } from '../objects.ts';
import { Resources } from '../resources.ts';
import { parseFieldSelector, parseLabelSelector } from '../selectors.ts';
import { decodeEvent } from '../watch-cache.ts';

/** One counted write: verb, resource plural (with `/subresource`), namespace/name. */
export interface CountedWrite {
  verb: 'create' | 'update' | 'patch' | 'delete';
  resource: string;
  name: string;
}

export class InMemoryClient extends Client {
  readonly resources: Resources;
  readonly writes: CountedWrite[] = [];
  private readonly watches = new Set<Watch>();

  constructor(readonly store: Store = new SqliteStore(':memory:')) {
    super({ path: '', context: 'in-memory', server: 'http://in-memory.invalid', insecureSkipTlsVerify: false, namespace: 'default' } as ConstructorParameters<
      typeof Client
    >[0]);
    this.resources = new Resources(store);
  }

  /** Creates namespaces (the store starts empty; Resources refuses objects in a missing namespace). */
  async namespaces(...names: string[]): Promise<void> {
    for (const name of names)
      await this.create({ group: '', version: 'v1', plural: 'namespaces', namespaced: false }, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
  }

  /** Writes of the kind (plural, or plural/subresource) so far; all writes without an argument. */
  count(filter?: (w: CountedWrite) => boolean): number {
    return filter ? this.writes.filter(filter).length : this.writes.length;
  }

  override async request<T = unknown>(method: string, path: string): Promise<T> {
    throw new ClientError('BadResponse', `InMemoryClient does not serve raw requests (${method} ${path})`);
  }

  override get<T extends KubeObject = KubeObject>(res: ResourceRef, name: string, opts: NamespaceOption = {}): Promise<T> {
    return call(async () => clone(await this.resources.get(info(res), ns(res, opts.namespace), name)) as T);
  }

  override list<T extends KubeObject = KubeObject>(res: ResourceRef, opts: ListOptions = {}): Promise<KubeList<T>> {
    return call(async () => {
      const page = await this.resources.list(info(res), collection(res, opts.namespace), {
        labels: parseLabelSelector(opts.labelSelector),
        fields: parseFieldSelector(opts.fieldSelector),
        limit: opts.limit,
        continueToken: opts.continue,
      });
      return {
        metadata: { resourceVersion: String(page.revision), ...(page.continueToken ? { continue: page.continueToken } : {}) },
        items: clone(page.items) as T[],
      };
    });
  }

  override create<T extends KubeObject = KubeObject>(res: ResourceRef, obj: KubeObject, opts: NamespaceOption = {}): Promise<T> {
    const namespace = ns(res, opts.namespace ?? obj.metadata?.namespace);
    return this.write(
      'create',
      res,
      undefined,
      String(obj.metadata?.name ?? obj.metadata?.generateName ?? ''),
      namespace,
      async () => (await this.resources.create(info(res), namespace, clone(obj))).object as T,
    );
  }

  override update<T extends KubeObject = KubeObject>(res: ResourceRef, obj: KubeObject, opts: NamespaceOption & { subresource?: string } = {}): Promise<T> {
    const namespace = ns(res, opts.namespace ?? obj.metadata?.namespace);
    const name = String(obj.metadata?.name ?? '');
    return this.write(
      'update',
      res,
      opts.subresource,
      name,
      namespace,
      async () => (await this.resources.update(info(res), namespace, name, clone(obj), opts.subresource)).object as T,
    );
  }

  override patch<T extends KubeObject = KubeObject>(res: ResourceRef, name: string, patch: unknown, opts: PatchOptions = {}): Promise<T> {
    const namespace = ns(res, opts.namespace);
    return this.write(
      'patch',
      res,
      opts.subresource,
      name,
      namespace,
      async () => (await this.resources.patch(info(res), namespace, name, opts.type ?? 'merge', JSON.stringify(patch), opts.subresource)).object as T,
    );
  }

  override delete(res: ResourceRef, name: string, opts: DeleteOptions = {}): Promise<KubeObject> {
    const namespace = ns(res, opts.namespace);
    return this.write('delete', res, undefined, name, namespace, async () => {
      const d = await this.resources.delete(info(res), namespace, name, { propagationPolicy: opts.propagationPolicy, preconditions: opts.preconditions });
      return d.object;
    });
  }

  /** A store watch from `resourceVersion`, decoded as the HTTP watch decodes it (no bookmarks). */
  override watchResource<T extends KubeObject = KubeObject>(res: ResourceRef, opts: WatchOptions, onEvent: (event: WatchEvent<T>) => void): Watch {
    const kind = info(res);
    const labels = parseLabelSelector(opts.labelSelector);
    let finish!: (err?: Error) => void;
    const done = new Promise<void>((resolve, reject) => {
      finish = (err) => (err ? reject(err) : resolve());
    });
    const w = this.store.watch(listPrefix(kind, collection(res, opts.namespace)), {
      fromRevision: Number(opts.resourceVersion ?? 0),
      onEvent: (ev) => {
        const d = decodeEvent(ev);
        if (labels && !labels(d.object)) return;
        onEvent({ type: d.deleted ? 'DELETED' : d.prev ? 'MODIFIED' : 'ADDED', object: clone(asVersion(kind, d.object)) as T });
      },
      onError: (err) => {
        this.watches.delete(watch);
        finish(err);
      },
    });
    const watch: Watch = {
      close: () => {
        w.close();
        this.watches.delete(watch);
        finish();
      },
      done,
    };
    this.watches.add(watch);
    return watch;
  }

  /** Ends every watch and closes the store. */
  override close(): void {
    for (const w of [...this.watches]) w.close();
    void this.store.close();
  }

  private async write<T>(
    verb: CountedWrite['verb'],
    res: ResourceRef,
    subresource: string | undefined,
    name: string,
    namespace: string | undefined,
    fn: () => Promise<T>,
  ): Promise<T> {
    const result = await call(fn);
    this.writes.push({ verb, resource: subresource ? `${res.plural}/${subresource}` : res.plural, name: namespace ? `${namespace}/${name}` : name });
    return clone(result);
  }
}

function info(res: ResourceRef): KindInfo {
  const found = findByResource(res.group, res.version, res.plural);
  if (!found)
    throw new StatusError({ kind: 'Status', reason: 'NotFound', code: 404, message: `the server could not find the requested resource (${res.plural})` }, 404);
  return found;
}

const ns = (res: ResourceRef, namespace: string | undefined) => (res.namespaced ? (namespace ?? 'default') : undefined);
/** A list or watch without a namespace spans all of them, as the HTTP client's does. */
const collection = (res: ResourceRef, namespace: string | undefined) => (res.namespaced ? namespace : undefined);
const clone = <T>(v: T): T => structuredClone(v);

/** Resources throws ApiError (the server's); callers of a Client expect StatusError, as over HTTP. */
async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ApiError) throw new StatusError(e.toStatus() as Status, e.code);
    throw e;
  }
}
