/**
 * An informer keeps a local cache of one resource in step with the server: list, then watch
 * from the list's resourceVersion; when the watch ends it resumes from the last version it
 * saw, and when that version has been compacted (410 Gone) it lists again and reports the
 * difference as events, so handlers never miss a change.
 */

export interface ObjectMeta { name: string; namespace?: string; uid?: string; resourceVersion?: string; [k: string]: unknown }
export interface KubeObject { apiVersion?: string; kind?: string; metadata: ObjectMeta; [k: string]: unknown }

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';

/** What an informer needs from a client: implemented over HTTP in @vessel/client. */
export interface ListWatch {
  list(): Promise<{ items: KubeObject[]; resourceVersion: string }>;
  /** Streams events after resourceVersion; `onEnd` fires once when the stream stops for any reason. */
  watch(resourceVersion: string, onEvent: (type: WatchEventType, obj: KubeObject) => void, onEnd: (err?: Error) => void): { close(): void };
}

export interface InformerHandlers {
  add?(obj: KubeObject): void;
  update?(oldObj: KubeObject, newObj: KubeObject): void;
  delete?(obj: KubeObject): void;
}

export const cacheKey = (obj: { metadata: ObjectMeta }) =>
  obj.metadata.namespace ? `${obj.metadata.namespace}/${obj.metadata.name}` : obj.metadata.name;

export class Informer {
  private readonly cache = new Map<string, KubeObject>();
  private readonly handlers: InformerHandlers[] = [];
  private resourceVersion = '';
  private current?: { close(): void };
  private stopped = false;
  private synced = false;
  private readonly syncWaiters: (() => void)[] = [];
  private retryDelayMs = 100;
  /** Counts re-lists (after 410 Gone or errors), for tests and metrics. */
  relists = 0;

  constructor(private readonly lw: ListWatch, private readonly onError?: (err: unknown) => void) {}

  on(handlers: InformerHandlers): void { this.handlers.push(handlers); }

  get(key: string): KubeObject | undefined { return this.cache.get(key); }
  list(): KubeObject[] { return [...this.cache.values()]; }
  hasSynced(): boolean { return this.synced; }

  /** Resolves after the first list has filled the cache. */
  waitForSync(): Promise<void> {
    return this.synced ? Promise.resolve() : new Promise((resolve) => this.syncWaiters.push(resolve));
  }

  start(): void { void this.relist(); }

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
        if (!fresh.has(key)) { this.cache.delete(key); this.emit('DELETED', old); }
      }
      for (const [key, obj] of fresh) {
        const old = this.cache.get(key);
        if (!old) { this.cache.set(key, obj); this.emit('ADDED', obj); }
        else if (old.metadata.resourceVersion !== obj.metadata.resourceVersion) { this.cache.set(key, obj); this.emit('MODIFIED', obj, old); }
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
    this.current = this.lw.watch(this.resourceVersion, (type, obj) => {
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
      if (type === 'DELETED') { this.cache.delete(key); this.emit('DELETED', old ?? obj); return; }
      this.cache.set(key, obj);
      this.emit(old ? 'MODIFIED' : 'ADDED', obj, old);
    }, (err) => {
      if (this.stopped) return;
      if (err) this.onError?.(err);
      // A compacted resourceVersion cannot be resumed: list again. Otherwise resume where we were.
      if (gone) this.retryLater(() => this.relist(), true);
      else if (err) this.retryLater(() => this.watch());
      else this.watch();
    });
  }

  private retryLater(fn: () => void, immediate = false): void {
    if (this.stopped) return;
    const delay = immediate ? 0 : this.retryDelayMs;
    this.retryDelayMs = Math.min(this.retryDelayMs * 2, 5000);
    setTimeout(fn, delay).unref();
  }

  private emit(type: 'ADDED' | 'MODIFIED' | 'DELETED', obj: KubeObject, old?: KubeObject): void {
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
