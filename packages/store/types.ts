/**
 * The Store contract every backend keeps (see conformance.ts, which each backend runs).
 *
 * Keys are opaque strings ("/registry/<group>/<resource>/<namespace>/<name>"); values are
 * opaque strings (JSON of a Kubernetes object). Every write bumps one store-wide revision,
 * which the API server exposes as `metadata.resourceVersion`, so that revision must be a
 * monotonically increasing integer shared by all keys, exactly like etcd's.
 */

export interface KV {
  key: string;
  value: string;
  /** Revision of the write that created this key (since its last deletion). */
  createRevision: number;
  /** Revision of the last write to this key. */
  modRevision: number;
}

export interface ListOptions {
  /** At most this many items; 0 or undefined means all. */
  limit?: number;
  /** Return keys strictly greater than this one (continue token of a previous page). */
  startAfter?: string;
  /**
   * Read as of this revision (a consistent continuation of a paged list). Reading
   * below the compacted revision throws StoreError code 'Gone'.
   */
  revision?: number;
}

export interface ListResult {
  items: KV[];
  /** The revision the list was read at. */
  revision: number;
  /** True when `limit` cut the list: more keys follow the last item. */
  more: boolean;
}

export type WatchEventType = 'put' | 'delete';

export interface WatchEvent {
  type: WatchEventType;
  /** For 'put': the new KV. For 'delete': the KV as it was before, with modRevision = the delete's revision. */
  kv: KV;
  /** The value before this event, if the key existed. */
  prev?: KV;
}

export interface WatchOptions {
  /** Deliver every event with revision > fromRevision, then live events. */
  fromRevision: number;
  onEvent: (event: WatchEvent) => void;
  /**
   * Called at most once, after which no more events arrive. A watch starting below the
   * compacted revision fails with StoreError code 'Gone'.
   */
  onError: (err: Error) => void;
}

export interface Watch {
  close(): void;
}

export interface Store {
  get(key: string): Promise<KV | undefined>;
  list(prefix: string, options?: ListOptions): Promise<ListResult>;
  /** Throws StoreError 'AlreadyExists' if the key exists. */
  create(key: string, value: string): Promise<KV>;
  /**
   * Throws 'NotFound' if the key is absent, 'Conflict' if expectedModRevision is given and
   * differs from the stored modRevision.
   */
  update(key: string, value: string, expectedModRevision?: number): Promise<KV>;
  /** Returns the deleted KV (modRevision = the delete's revision). Same errors as update. */
  delete(key: string, expectedModRevision?: number): Promise<KV>;
  /** Events for keys starting with prefix. */
  watch(prefix: string, options: WatchOptions): Watch;
  /** The store's current revision (the last write's). */
  currentRevision(): Promise<number>;
  /** Forget history at or below revision; watches/lists from there fail with 'Gone'. */
  compact(revision: number): Promise<void>;
  /** The oldest revision a watch may start from (compacted revision). */
  compactedRevision(): Promise<number>;
  close(): Promise<void>;
}
