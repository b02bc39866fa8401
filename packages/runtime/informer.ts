/**
 * An informer keeps a local cache of one resource in step with the server: list, then watch
 * from the list's resourceVersion; when the watch ends it resumes from the last version it
 * saw, and when that version has been compacted (410 Gone) it lists again and reports the
 * difference as events, so handlers never miss a change.
 *
 * Indexes (client-go's Indexer) answer "which cached objects have key K under index I" without
 * scanning the cache: each index function maps an object to its keys, and the informer keeps
 * key → cache keys up to date on every add, update and delete, before handlers run.
 */
import type { KubeObject as ApiObject, ObjectMeta } from '@vessel/api';
import type { WatchEventType } from '@vessel/client';

/** @vessel/api's KubeObject as the server stores it: every object an informer caches has metadata and a name. */
export type KubeObject = ApiObject & { metadata: ObjectMeta & { name: string } };

/**
 * A KubeVirt/CDI type (type-only, from @kubevirt-ui-ext/kubevirt-api) as an informer caches it:
 * its spec and status typed, its metadata ours: `Informer<Typed<V1VirtualMachineInstance>>`.
 */
export type Typed<T> = KubeObject & Omit<T, 'metadata'>;

/** What an informer needs from a client: implemented over HTTP in @vessel/client. */
export interface ListWatch<T extends KubeObject = KubeObject> {
  list(): Promise<{ items: T[]; resourceVersion: string }>;
  /** Streams events after resourceVersion; `onEnd` fires once when the stream stops for any reason. */
  watch(resourceVersion: string, onEvent: (type: WatchEventType, obj: T) => void, onEnd: (err?: Error) => void): { close(): void };
}

export interface InformerHandlers<T extends KubeObject = KubeObject> {
  add?(obj: T): void;
  update?(oldObj: T, newObj: T): void;
  delete?(obj: T): void;
}

/** The keys an object has under one index (none: it is not in that index). */
export type IndexFunc<T extends KubeObject = KubeObject> = (obj: T) => string[];

export const cacheKey = (obj: KubeObject): string => (obj.metadata.namespace ? `${obj.metadata.namespace}/${obj.metadata.name}` : obj.metadata.name);

export class Informer<T extends KubeObject = KubeObject> {
  private readonly cache = new Map<string, T>();
  private readonly handlers: InformerHandlers<T>[] = [];
  private readonly indexFuncs = new Map<string, IndexFunc<T>>();
  /** index name → index key → cache keys. */
  private readonly indexes = new Map<string, Map<string, Set<string>>>();
  /** index name → cache key → the index keys it is filed under (not recomputed: a handler may have mutated the object). */
  private readonly filed = new Map<string, Map<string, string[]>>();
  private resourceVersion = '';
  private current?: { close(): void };
  private stopped = false;
  private synced = false;
  private readonly syncWaiters: (() => void)[] = [];
  private retryDelayMs = 100;
  /** Counts re-lists (after 410 Gone or errors), for tests and metrics. */
  relists = 0;

  constructor(
    private readonly lw: ListWatch<T>,
    private readonly onError?: (err: unknown) => void,
  ) {}

  on(handlers: InformerHandlers<T>): void {
    this.handlers.push(handlers);
  }

  get(key: string): T | undefined {
    return this.cache.get(key);
  }
  list(): T[] {
    return [...this.cache.values()];
  }

  /** Adds (or replaces) index `name`, filled from the cache at once and kept current after. */
  addIndex(name: string, fn: IndexFunc<T>): this {
    this.indexFuncs.set(name, fn);
    this.indexes.set(name, new Map());
    this.filed.set(name, new Map());
    for (const [key, obj] of this.cache) this.indexOne(name, fn, key, obj);
    return this;
  }

  /** The cached objects with `key` under index `name`. */
  byIndex(name: string, key: string): T[] {
    const index = this.indexes.get(name);
    if (!index) throw new Error(`informer: no index ${name}`);
    return [...(index.get(key) ?? [])].map((k) => this.cache.get(k)!);
  }

  hasSynced(): boolean {
    return this.synced;
  }

  /** Resolves after the first list has filled the cache. */
  waitForSync(): Promise<void> {
    return this.synced ? Promise.resolve() : new Promise((resolve) => this.syncWaiters.push(resolve));
  }

  start(): void {
    void this.relist();
  }

  stop(): void {
    this.stopped = true;
    this.current?.close();
  }

  private async relist(): Promise<void> {
    if (this.stopped) return;
    try {
      const { items, resourceVersion } = await this.lw.list();
      if (this.stopped) return;
      const fresh = new Map(items.map((o) => [cacheKey(o), o]));
      for (const [key, old] of this.cache) {
        if (!fresh.has(key)) {
          this.remove(key);
          this.emit('DELETED', old);
        }
      }
      for (const [key, obj] of fresh) {
        const old = this.cache.get(key);
        if (!old) {
          this.store(key, obj);
          this.emit('ADDED', obj);
        } else if (old.metadata.resourceVersion !== obj.metadata.resourceVersion) {
          this.store(key, obj);
          this.emit('MODIFIED', obj, old);
        }
      }
      this.resourceVersion = resourceVersion;
      if (this.relists++ === 0 || !this.synced) {
        this.synced = true;
        this.syncWaiters.splice(0).forEach((w) => w());
      }
      this.retryDelayMs = 100;
      this.watch();
    } catch (e) {
      this.onError?.(e);
      this.retryLater(() => this.relist());
    }
  }

  private watch(): void {
    if (this.stopped) return;
    let gone = false;
    this.current = this.lw.watch(
      this.resourceVersion,
      (type, obj) => {
        if (type === 'ERROR') {
          const code = (obj as { code?: number }).code;
          if (code === 410) gone = true;
          else this.onError?.(new Error(`watch error: ${JSON.stringify(obj)}`));
          return;
        }
        if (obj.metadata?.resourceVersion) this.resourceVersion = obj.metadata.resourceVersion;
        if (type === 'BOOKMARK') return;
        const key = cacheKey(obj);
        const old = this.cache.get(key);
        if (type === 'DELETED') {
          if (old) this.remove(key);
          this.emit('DELETED', old ?? obj);
          return;
        }
        this.store(key, obj);
        this.emit(old ? 'MODIFIED' : 'ADDED', obj, old);
      },
      (err) => {
        if (this.stopped) return;
        if (err) this.onError?.(err);
        // A compacted resourceVersion cannot be resumed: list again. Otherwise resume where we were.
        if (gone) this.retryLater(() => this.relist(), true);
        else if (err) this.retryLater(() => this.watch());
        else this.watch();
      },
    );
  }

  private retryLater(fn: () => void, immediate = false): void {
    if (this.stopped) return;
    const delay = immediate ? 0 : this.retryDelayMs;
    this.retryDelayMs = Math.min(this.retryDelayMs * 2, 5000);
    setTimeout(fn, delay).unref();
  }

  private store(key: string, obj: T): void {
    this.unindex(key);
    this.cache.set(key, obj);
    for (const [name, fn] of this.indexFuncs) this.indexOne(name, fn, key, obj);
  }

  private remove(key: string): void {
    this.unindex(key);
    this.cache.delete(key);
  }

  private indexOne(name: string, fn: IndexFunc<T>, key: string, obj: T): void {
    const index = this.indexes.get(name)!;
    const keys = [...new Set(fn(obj))];
    this.filed.get(name)!.set(key, keys);
    for (const k of keys) {
      let cacheKeys = index.get(k);
      if (!cacheKeys) index.set(k, (cacheKeys = new Set()));
      cacheKeys.add(key);
    }
  }

  private unindex(key: string): void {
    for (const [name, index] of this.indexes) {
      const filed = this.filed.get(name)!;
      for (const k of filed.get(key) ?? []) {
        const keys = index.get(k)!;
        keys.delete(key);
        if (keys.size === 0) index.delete(k);
      }
      filed.delete(key);
    }
  }

  private emit(type: 'ADDED' | 'MODIFIED' | 'DELETED', obj: T, old?: T): void {
    for (const h of this.handlers) {
      try {
        if (type === 'ADDED') h.add?.(obj);
        else if (type === 'MODIFIED') h.update?.(old!, obj);
        else h.delete?.(obj);
      } catch (e) {
        this.onError?.(e);
      }
    }
  }
}
