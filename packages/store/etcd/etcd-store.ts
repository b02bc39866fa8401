/**
 * EtcdStore: the Store on etcd v3 (etcd3 npm client), for HA installs where several API
 * servers share one etcd cluster. Store revisions are etcd's revisions; every key is stored
 * under a configurable prefix (default '/vessel'). Preconditions are etcd transactions, so
 * they hold across API servers; watches are etcd watches, so every server sees every write.
 */
import {
  ClientClosedError,
  CompareResult,
  CompareTarget,
  Etcd3,
  GRPCCancelledError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  type ICompare,
  type IEvent,
  type IKeyValue,
  type IOptions,
  type IWatchResponse,
  type Watcher,
} from 'etcd3';
import { StoreError } from '../errors.ts';
import { WatchDelivery, asError, closedError, prefixEndBytes } from '../internal.ts';
import type { KV, ListOptions, ListResult, Store, Watch, WatchEvent, WatchOptions } from '../types.ts';

export interface EtcdStoreOptions {
  /** Client URLs, e.g. ['http://127.0.0.1:2379']. */
  endpoints: string[];
  /** Prepended to every key. Default '/vessel'. */
  prefix?: string;
  /** Deadline of each unary etcd call (ms); a call that misses it fails 'Unavailable'. Default 10000. */
  callTimeoutMs?: number;
}

type FaultHandling = NonNullable<IOptions['faultHandling']>;

/**
 * A global fault policy that runs each call once. etcd3's default retries "recoverable"
 * failures up to 3 times, which silently repeats non-idempotent transactions whose outcome
 * is unknown (a create that landed would come back 'AlreadyExists'); we would rather report
 * 'Unavailable' and let the caller decide. The per-host circuit breakers stay as they are.
 */
const oneShotPolicy = {
  execute: <T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T): Promise<T> =>
    Promise.resolve().then(() => fn({ signal: new AbortController().signal })),
  onSuccess: () => ({ dispose() {} }),
  onFailure: () => ({ dispose() {} }),
} as unknown as FaultHandling['global'];

const MATCH_ALL = Buffer.from([0]);

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function isCompactedError(err: unknown): boolean {
  return errorMessage(err).includes('required revision has been compacted');
}

/** Maps etcd/gRPC failures onto StoreError codes; anything else is passed through. */
function toStoreError(err: unknown): Error {
  if (err instanceof StoreError) return err;
  const message = errorMessage(err);
  if (isCompactedError(err)) return new StoreError('Gone', message);
  if (message.includes('required revision is a future revision')) return new StoreError('Gone', message);
  if (
    err instanceof GRPCUnavailableError ||
    err instanceof GRPCDeadlineExceededError ||
    err instanceof GRPCCancelledError ||
    err instanceof ClientClosedError ||
    (err as { isBrokenCircuitError?: boolean } | null)?.isBrokenCircuitError === true ||
    /etcdserver: (request timed out|leader changed|no leader|too many requests|server stopped)/.test(message)
  ) {
    return new StoreError('Unavailable', `etcd unavailable: ${message}`);
  }
  return asError(err);
}

function checkKey(key: string): void {
  if (typeof key !== 'string' || key === '') throw new RangeError('store keys must be non-empty strings');
}

export class EtcdStore implements Store {
  readonly prefix: string;
  private readonly client: Etcd3;
  private closed = false;
  /** Highest revision known to be compacted (ours, or learned by probing). */
  private knownCompacted = 0;
  private readonly watchers = new Set<EtcdWatcher>();
  /** What watchers may use of the store (kept off the public class). */
  private readonly source: WatchSource = {
    range: (prefix) => this.range(prefix),
    toKV: (kv) => this.toKV(kv),
    readable: (revision) => this.readable(revision),
    unregister: (watcher) => this.watchers.delete(watcher),
  };

  constructor(options: EtcdStoreOptions) {
    if (options.endpoints.length === 0) throw new RangeError('EtcdStore needs at least one endpoint');
    this.prefix = options.prefix ?? '/vessel';
    const timeout = options.callTimeoutMs ?? 10000;
    this.client = new Etcd3({
      hosts: options.endpoints,
      // Streams (watches) have no deadline; unary calls do, so a dead etcd can't hang requests.
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + timeout }),
      faultHandling: { global: oneShotPolicy },
      // gRPC's default 4 MiB receive limit breaks unpaged lists of a few thousand objects;
      // etcd itself caps a request at 1.5 MiB per value, so a range can legitimately be large.
      grpcOptions: { 'grpc.max_receive_message_length': 512 * 1024 * 1024 },
    });
  }

  async get(key: string): Promise<KV | undefined> {
    const res = await this.call(() => this.client.kv.range({ key: this.k(key) }));
    return res.kvs.length > 0 ? this.toKV(res.kvs[0]) : undefined;
  }

  async list(prefix: string, options: ListOptions = {}): Promise<ListResult> {
    const limit = options.limit && options.limit > 0 ? Math.floor(options.limit) : 0;
    const revision = options.revision && options.revision > 0 ? options.revision : undefined;
    const [prefixStart, end] = this.range(prefix);
    let start = prefixStart;
    if (options.startAfter !== undefined) {
      const after = Buffer.concat([this.k(options.startAfter), MATCH_ALL]); // the next key after it
      if (Buffer.compare(after, start) > 0) start = after;
      if (!end.equals(MATCH_ALL) && Buffer.compare(start, end) >= 0) {
        // Nothing is left in the range, but still validate the revision like a real read.
        const res = await this.call(() => this.client.kv.range({ key: this.probeKey(), revision, count_only: true }));
        return { items: [], revision: revision ?? Number(res.header.revision), more: false };
      }
    }
    const res = await this.call(() => this.client.kv.range({ key: start, range_end: end, limit, revision }));
    return {
      items: res.kvs.map((kv) => this.toKV(kv)),
      revision: revision ?? Number(res.header.revision),
      more: limit > 0 && res.more,
    };
  }

  async create(key: string, value: string): Promise<KV> {
    checkKey(key);
    const k = this.k(key);
    const res = await this.call(() =>
      this.client.kv.txn({
        compare: [{ key: k, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: 0 }],
        success: [{ request_put: { key: k, value: Buffer.from(value) } }],
        failure: [],
      }),
    );
    if (!res.succeeded) throw new StoreError('AlreadyExists', `key ${key} already exists`, key);
    const rev = Number(res.header.revision);
    return { key, value, createRevision: rev, modRevision: rev };
  }

  async update(key: string, value: string, expectedModRevision?: number): Promise<KV> {
    checkKey(key);
    const k = this.k(key);
    const res = await this.call(() =>
      this.client.kv.txn({
        compare: this.preconditions(k, expectedModRevision),
        success: [{ request_put: { key: k, value: Buffer.from(value), prev_kv: true } }],
        failure: [{ request_range: { key: k } }],
      }),
    );
    if (!res.succeeded) throw this.preconditionError(key, res.responses[0]?.response_range?.kvs, expectedModRevision);
    const prev = res.responses[0].response_put.prev_kv;
    return { key, value, createRevision: Number(prev.create_revision), modRevision: Number(res.header.revision) };
  }

  async delete(key: string, expectedModRevision?: number): Promise<KV> {
    checkKey(key);
    const k = this.k(key);
    const res = await this.call(() =>
      this.client.kv.txn({
        compare: this.preconditions(k, expectedModRevision),
        success: [{ request_delete_range: { key: k, prev_kv: true } }],
        failure: [{ request_range: { key: k } }],
      }),
    );
    if (!res.succeeded) throw this.preconditionError(key, res.responses[0]?.response_range?.kvs, expectedModRevision);
    const prev = this.toKV(res.responses[0].response_delete_range.prev_kvs[0]);
    return { ...prev, modRevision: Number(res.header.revision) };
  }

  watch(prefix: string, options: WatchOptions): Watch {
    if (!Number.isInteger(options.fromRevision) || options.fromRevision < 0) {
      throw new RangeError(`fromRevision must be a non-negative integer, got ${options.fromRevision}`);
    }
    const watcher = new EtcdWatcher(this.source, prefix, options);
    if (this.closed) {
      watcher.delivery.fail(closedError());
    } else {
      this.watchers.add(watcher);
      watcher.start(this.client);
    }
    return { close: () => watcher.delivery.close() };
  }

  async currentRevision(): Promise<number> {
    const res = await this.call(() => this.client.kv.range({ key: this.probeKey(), count_only: true }));
    return Number(res.header.revision);
  }

  /**
   * etcd compaction at `revision`. At or below the compacted revision it is a no-op; above
   * the current revision it is a RangeError.
   */
  async compact(revision: number): Promise<void> {
    if (!Number.isInteger(revision) || revision < 0) throw new RangeError(`invalid compaction revision ${revision}`);
    if (revision <= this.knownCompacted) {
      this.checkOpen();
      return;
    }
    try {
      await this.call(() => this.client.kv.compact({ revision }));
    } catch (err) {
      if (err instanceof StoreError && err.code === 'Gone') {
        if (err.message.includes('future')) throw new RangeError(`cannot compact at ${revision}: ${err.message}`);
        return; // someone (another API server) already compacted past it
      }
      throw err;
    }
    this.knownCompacted = Math.max(this.knownCompacted, revision);
  }

  /**
   * etcd has no call that returns the compacted revision cheaply, but a read at revision r
   * fails exactly when r < compacted. So: check the last known value (one round trip when
   * nothing changed), else binary-search the smallest readable revision. This also picks up
   * compactions made by other API servers.
   */
  async compactedRevision(): Promise<number> {
    let lo = Math.max(this.knownCompacted, 1);
    if (await this.readable(lo)) return this.knownCompacted;
    let hi = await this.currentRevision(); // always readable
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (await this.readable(mid)) hi = mid;
      else lo = mid;
    }
    this.knownCompacted = Math.max(this.knownCompacted, hi);
    return this.knownCompacted;
  }

  /** Closes the client. Open watches end with onError(StoreError 'Unavailable'). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const cancels = [...this.watchers].map((w) => {
      w.delivery.fail(closedError());
      return w.cancelled;
    });
    this.watchers.clear();
    // Let the cancel requests go out, but never wait long on an unreachable etcd.
    await Promise.race([Promise.all(cancels), new Promise((resolve) => setTimeout(resolve, 1000).unref())]);
    this.client.close();
  }

  /** The etcd key range [start, end) holding the store keys under prefix. */
  private range(prefix: string): [Buffer, Buffer] {
    const start = this.k(prefix);
    if (start.length === 0) return [MATCH_ALL, MATCH_ALL];
    return [start, prefixEndBytes(start)];
  }

  private toKV(kv: IKeyValue): KV {
    return {
      key: kv.key.toString('utf8').slice(this.prefix.length),
      value: kv.value.toString('utf8'),
      createRevision: Number(kv.create_revision),
      modRevision: Number(kv.mod_revision),
    };
  }

  /** Whether history at `revision` is still readable (not compacted). */
  private async readable(revision: number): Promise<boolean> {
    try {
      await this.call(() => this.client.kv.range({ key: this.probeKey(), revision, count_only: true }));
      return true;
    } catch (err) {
      if (!(err instanceof StoreError && err.code === 'Gone')) throw err;
      if (err.message.includes('future')) return true; // nothing there can be compacted yet
      this.knownCompacted = Math.max(this.knownCompacted, revision + 1);
      return false;
    }
  }

  private k(key: string): Buffer {
    return Buffer.from(this.prefix + key);
  }

  private probeKey(): Buffer {
    return this.prefix === '' ? MATCH_ALL : Buffer.from(this.prefix);
  }

  private checkOpen(): void {
    if (this.closed) throw closedError();
  }

  private async call<T>(fn: () => Promise<T>): Promise<T> {
    this.checkOpen();
    try {
      return await fn();
    } catch (err) {
      throw toStoreError(err);
    }
  }

  private preconditions(k: Buffer, expectedModRevision: number | undefined): ICompare[] {
    const exists: ICompare = { key: k, target: CompareTarget.Version, result: CompareResult.Greater, version: 0 };
    if (expectedModRevision === undefined) return [exists];
    return [exists, { key: k, target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: expectedModRevision }];
  }

  private preconditionError(key: string, kvs: IKeyValue[] | undefined, expected: number | undefined): StoreError {
    if (!kvs || kvs.length === 0) return new StoreError('NotFound', `key ${key} not found`, key);
    return new StoreError('Conflict', `key ${key} is at revision ${kvs[0].mod_revision}, not ${expected}`, key);
  }
}

interface WatchSource {
  range(prefix: string): [Buffer, Buffer];
  toKV(kv: IKeyValue): KV;
  readable(revision: number): Promise<boolean>;
  unregister(watcher: EtcdWatcher): void;
}

/**
 * One etcd watch (startRevision = fromRevision + 1, with prevKv). Events queue from the
 * start but delivery is held until a read at fromRevision confirms it isn't compacted: etcd
 * itself only refuses start revisions below the compacted one, which would let
 * fromRevision == compacted - 1 through although our contract says 'Gone'.
 */
class EtcdWatcher {
  readonly delivery: WatchDelivery;
  /** Resolves once the etcd watcher is cancelled (or was never attached). */
  cancelled: Promise<void> = Promise.resolve();
  /** Highest revision queued: everything at or below it has been seen. */
  private last: number;
  private watcher?: Watcher;

  constructor(
    private readonly store: WatchSource,
    private readonly prefix: string,
    private readonly options: WatchOptions,
  ) {
    this.last = options.fromRevision;
    this.delivery = new WatchDelivery(options, () => {
      store.unregister(this);
      this.cancel();
    });
    this.delivery.hold();
  }

  start(client: Etcd3): void {
    const [start, end] = this.store.range(this.prefix);
    const watcher = client
      .watch()
      .inRange({ start, end })
      .withPreviousKV()
      .startRevision(String(this.options.fromRevision + 1))
      .watcher();
    this.watcher = watcher;
    let verified = false;
    watcher.on('connected', () => {
      if (verified) return;
      verified = true;
      void this.verify();
    });
    watcher.on('data', (res: IWatchResponse) => this.onData(res));
    watcher.on('disconnected', () => {
      // etcd3 resumes from the last *header* revision it saw + 1, which can skip events
      // still being replayed from history; resume from the last event we actually got.
      watcher.request.start_revision = String(this.last + 1);
    });
    watcher.on('error', (err: Error) => void this.onCancelled(err));
  }

  private async verify(): Promise<void> {
    try {
      if (!(await this.store.readable(Math.max(this.options.fromRevision, 1)))) {
        this.delivery.fail(new StoreError('Gone', `revision ${this.options.fromRevision} has been compacted`));
        return;
      }
      this.delivery.release();
    } catch (err) {
      this.delivery.fail(toStoreError(err));
    }
  }

  private onData(res: IWatchResponse): void {
    if (this.delivery.closed) return;
    if (res.events.length === 0) {
      // A progress notification: etcd sends it only to watchers that have caught up, so
      // every event up to header.revision has been sent; resuming later may start there.
      if (!res.created) this.last = Math.max(this.last, Number(res.header.revision));
      return;
    }
    for (const ev of res.events) {
      const rev = Number(ev.kv.mod_revision);
      if (rev <= this.last) continue; // replayed after a reconnect
      this.last = rev;
      this.delivery.push(this.toEvent(ev, rev));
    }
  }

  private toEvent(ev: IEvent, rev: number): WatchEvent {
    const prev = ev.prev_kv ? this.store.toKV(ev.prev_kv) : undefined;
    if (ev.type === 'Put') {
      const kv = this.store.toKV(ev.kv);
      return prev ? { type: 'put', kv, prev } : { type: 'put', kv };
    }
    // prev_kv is missing only if compaction already removed it; keep the key at least.
    const before = prev ?? { key: this.store.toKV(ev.kv).key, value: '', createRevision: 0, modRevision: 0 };
    return prev ? { type: 'delete', kv: { ...before, modRevision: rev }, prev } : { type: 'delete', kv: { ...before, modRevision: rev } };
  }

  /** etcd cancelled the watch (compaction, or another server-side reason). */
  private async onCancelled(err: Error): Promise<void> {
    this.watcher = undefined; // etcd3 has already dropped it; cancelling again would hang
    if (this.delivery.closed) return;
    let error: Error = new StoreError('Unavailable', `etcd cancelled the watch: ${err.message}`);
    try {
      if (!(await this.store.readable(Math.max(this.last, 1)))) {
        error = new StoreError('Gone', `revision ${this.last} has been compacted`);
      }
    } catch (probeErr) {
      error = toStoreError(probeErr);
    }
    this.delivery.fail(error);
  }

  private cancel(): void {
    const watcher = this.watcher;
    if (!watcher) return;
    this.watcher = undefined;
    // Cancelling only frees the server's watch: a failure (connection gone) leaves nothing to free.
    this.cancelled = watcher.cancel().catch(() => undefined);
  }
}
