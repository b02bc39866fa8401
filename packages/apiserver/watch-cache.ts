/**
 * One store watch per kind, shared by every HTTP watch of that kind. Each event is decoded
 * once (and serialized once per event type) however many clients watch, and a short history
 * lets clients resume from a recent resourceVersion without a store round trip. A resume from
 * before that history falls back to a watch of its own on the store, which answers Gone when
 * the revision has been compacted.
 */
import type { Store, WatchEvent } from '@vessel/store';
import { decode, type StoredObject } from './objects.ts';

export interface DecodedEvent {
  revision: number;
  key: string;
  /** For a delete: the object as it was, with the delete's resourceVersion. */
  object: StoredObject;
  prev?: StoredObject;
  deleted: boolean;
  /** Serialized watch lines, filled by whoever serializes first (per event type / format). */
  lines: Map<string, string>;
}

export interface Subscription {
  close(): void;
}
type Listener = { prefix: string; fromRevision: number; onEvent: (e: DecodedEvent) => void; onError: (err: Error) => void };

const HISTORY = 2048;

export function decodeEvent(ev: WatchEvent): DecodedEvent {
  const prev = ev.prev ? decode(ev.prev) : undefined;
  if (ev.type === 'delete') {
    const object = decode(ev.prev ?? ev.kv);
    object.metadata.resourceVersion = String(ev.kv.modRevision);
    return { revision: ev.kv.modRevision, key: ev.kv.key, object, prev, deleted: true, lines: new Map() };
  }
  return { revision: ev.kv.modRevision, key: ev.kv.key, object: decode(ev.kv), prev, deleted: false, lines: new Map() };
}

class KindCache {
  private readonly history: DecodedEvent[] = [];
  /** Every event after this revision is in `history` (or still to arrive). */
  private complete: number;
  private readonly listeners = new Set<Listener>();
  private readonly watch;

  constructor(
    store: Store,
    prefix: string,
    startRevision: number,
    private readonly onFail: () => void,
  ) {
    this.complete = startRevision;
    this.watch = store.watch(prefix, {
      fromRevision: startRevision,
      onEvent: (ev) => {
        const d = decodeEvent(ev);
        this.history.push(d);
        if (this.history.length > HISTORY) this.complete = this.history.shift()!.revision;
        for (const l of this.listeners) if (d.revision > l.fromRevision && d.key.startsWith(l.prefix)) l.onEvent(d);
      },
      onError: (err) => {
        this.onFail();
        for (const l of this.listeners) l.onError(err);
        this.listeners.clear();
      },
    });
  }

  /** Undefined when fromRevision is older than the history: the caller watches the store itself. */
  subscribe(l: Listener): Subscription | undefined {
    if (l.fromRevision < this.complete) return undefined;
    for (const d of this.history) if (d.revision > l.fromRevision && d.key.startsWith(l.prefix)) l.onEvent(d);
    this.listeners.add(l);
    return {
      close: () => {
        this.listeners.delete(l);
      },
    };
  }

  close(): void {
    this.watch.close();
    this.listeners.clear();
  }
}

export class WatchCaches {
  private readonly caches = new Map<string, Promise<KindCache>>();
  constructor(private readonly store: Store) {}

  /**
   * Delivers decoded events for keys under `prefix` (inside the kind's `kindPrefix`) with a
   * revision above fromRevision, in order. onError ends the subscription.
   */
  async subscribe(
    kindPrefix: string,
    prefix: string,
    fromRevision: number,
    onEvent: (e: DecodedEvent) => void,
    onError: (err: Error) => void,
  ): Promise<Subscription> {
    let cache = this.caches.get(kindPrefix);
    if (!cache) {
      cache = this.store.currentRevision().then((rev) => new KindCache(this.store, kindPrefix, rev, () => this.caches.delete(kindPrefix)));
      cache.catch(() => this.caches.delete(kindPrefix));
      this.caches.set(kindPrefix, cache);
    }
    const sub = (await cache).subscribe({ prefix, fromRevision, onEvent, onError });
    if (sub) return sub;
    const own = this.store.watch(prefix, { fromRevision, onEvent: (ev) => onEvent(decodeEvent(ev)), onError });
    return own;
  }

  async close(): Promise<void> {
    // A cache that failed to start has nothing to close; its failure went to its first watcher.
    for (const c of this.caches.values()) (await c.catch(() => undefined))?.close();
    this.caches.clear();
  }
}
