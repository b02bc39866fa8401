/**
 * SqliteStore: the Store on one SQLite file (better-sqlite3), for single-server installs.
 *
 * Layout: `kv` holds the current value of every key; `log` holds one row per revision (the
 * write's new state and the key's previous state), which is what watches replay and what
 * lists at an older revision are rebuilt from; `meta` holds the current and compacted
 * revision. Every write is one transaction that appends to the log and bumps the revision;
 * WAL with synchronous=FULL means a write that returned survives SIGKILL and power loss.
 *
 * One process owns the file: it is opened with locking_mode=EXCLUSIVE, because the current
 * revision is cached in memory and live watch events come from an in-process emitter, so a
 * second writer would break both. A second open fails with StoreError 'Unavailable'.
 */
import Database from 'better-sqlite3';
import { StoreError } from '../errors.ts';
import { WatchDelivery, closedError, prefixEnd } from '../internal.ts';
import type { KV, ListOptions, ListResult, Store, Watch, WatchEvent, WatchOptions } from '../types.ts';

export interface SqliteStoreOptions {
  /**
   * A live watch whose consumer falls this many events behind drops its in-memory queue and
   * re-reads the missed events from the log (so memory stays bounded and nothing is lost,
   * unless compaction overtakes it, which ends the watch with 'Gone'). Default 10000.
   */
  watchQueueLimit?: number;
  /** How long to wait for the file's lock when opening (ms). Default 2000. */
  lockTimeoutMs?: number;
}

interface KvRow {
  key: string;
  value: string;
  create_rev: number;
  mod_rev: number;
}

interface LogRow {
  rev: number;
  key: string;
  type: 'put' | 'delete';
  value: string | null;
  create_rev: number | null;
  prev_value: string | null;
  prev_create_rev: number | null;
  prev_mod_rev: number | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  rev INTEGER NOT NULL,
  compacted INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, rev, compacted) VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  create_rev INTEGER NOT NULL,
  mod_rev INTEGER NOT NULL
);
-- One row per revision. For deletes value/create_rev are NULL; prev_* is NULL when the key
-- did not exist before the write.
CREATE TABLE IF NOT EXISTS log (
  rev INTEGER PRIMARY KEY,
  key TEXT NOT NULL,
  type TEXT NOT NULL CHECK (type IN ('put', 'delete')),
  value TEXT,
  create_rev INTEGER,
  prev_value TEXT,
  prev_create_rev INTEGER,
  prev_mod_rev INTEGER
);
CREATE INDEX IF NOT EXISTS log_key_rev ON log (key, rev);
`;

/** Revisions a catching-up watch reads from the log per step (then it yields). */
const REPLAY_CHUNK = 1000;
/** Log rows deleted per transaction by compact(), so compaction never blocks writers long. */
const COMPACT_CHUNK = 5000;

function toKV(row: KvRow): KV {
  return { key: row.key, value: row.value, createRevision: row.create_rev, modRevision: row.mod_rev };
}

function toEvent(row: LogRow): WatchEvent {
  const prev: KV | undefined =
    row.prev_value === null
      ? undefined
      : { key: row.key, value: row.prev_value, createRevision: row.prev_create_rev as number, modRevision: row.prev_mod_rev as number };
  if (row.type === 'put') {
    const kv: KV = { key: row.key, value: row.value as string, createRevision: row.create_rev as number, modRevision: row.rev };
    return prev ? { type: 'put', kv, prev } : { type: 'put', kv };
  }
  const before = prev as KV;
  return { type: 'delete', kv: { ...before, modRevision: row.rev }, prev: before };
}

function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED';
}

function checkKey(key: string): void {
  if (typeof key !== 'string' || key === '') throw new RangeError('store keys must be non-empty strings');
}

export class SqliteStore implements Store {
  readonly path: string;
  private readonly db: Database.Database;
  private readonly watchQueueLimit: number;
  /** Cached from meta: this connection is the only writer (exclusive lock). */
  private rev: number;
  private compacted: number;
  private closed = false;
  private readonly watchers = new Set<SqliteWatcher>();
  private readonly txn: Database.Transaction<(fn: () => void, rev: number) => void>;
  private readonly listStatements = new Map<string, Database.Statement>();
  private readonly logStatements = new Map<string, Database.Statement>();
  /** What watchers may see of the store (kept off the public class). */
  private readonly source: WatchSource = {
    revision: () => this.rev,
    compacted: () => this.compacted,
    readLog: (prefix, after, upTo) => this.readLog(prefix, after, upTo),
    unregister: (watcher) => this.watchers.delete(watcher),
  };

  private readonly stmt: {
    getKv: Database.Statement<[string], KvRow>;
    insertKv: Database.Statement<[string, string, number, number]>;
    updateKv: Database.Statement<[string, number, string]>;
    deleteKv: Database.Statement<[string]>;
    insertLog: Database.Statement<[number, string, string, string | null, number | null, string | null, number | null, number | null]>;
    setRev: Database.Statement<[number]>;
    setCompacted: Database.Statement<[number]>;
    minLogRev: Database.Statement<[], { rev: number | null }>;
    deleteLog: Database.Statement<[number, number]>;
  };

  /** Opens (creating if needed) the store at `path`; ':memory:' gives a throwaway store. */
  constructor(path: string, options: SqliteStoreOptions = {}) {
    this.path = path;
    this.watchQueueLimit = options.watchQueueLimit ?? 10000;
    const db = new Database(path, { timeout: options.lockTimeoutMs ?? 2000 });
    try {
      // Exclusive before WAL is first used: then SQLite needs no shared-memory index, and
      // the lock taken by the schema transaction below is held until close().
      db.pragma('locking_mode = EXCLUSIVE');
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.transaction(() => db.exec(SCHEMA)).immediate();
      const meta = db.prepare<[], { rev: number; compacted: number }>('SELECT rev, compacted FROM meta WHERE id = 1').get();
      if (!meta) throw new Error(`${path}: missing meta row`);
      this.rev = meta.rev;
      this.compacted = meta.compacted;
    } catch (err) {
      db.close();
      if (isBusy(err)) throw new StoreError('Unavailable', `${path} is in use by another process`);
      throw err;
    }
    this.db = db;
    this.txn = db.transaction((fn: () => void, rev: number) => {
      fn();
      this.stmt.setRev.run(rev);
    });
    this.stmt = {
      getKv: db.prepare('SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?'),
      insertKv: db.prepare('INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?, ?, ?, ?)'),
      updateKv: db.prepare('UPDATE kv SET value = ?, mod_rev = ? WHERE key = ?'),
      deleteKv: db.prepare('DELETE FROM kv WHERE key = ?'),
      insertLog: db.prepare('INSERT INTO log (rev, key, type, value, create_rev, prev_value, prev_create_rev, prev_mod_rev) VALUES (?, ?, ?, ?, ?, ?, ?, ?)'),
      setRev: db.prepare('UPDATE meta SET rev = ? WHERE id = 1'),
      setCompacted: db.prepare('UPDATE meta SET compacted = ? WHERE id = 1'),
      minLogRev: db.prepare('SELECT MIN(rev) AS rev FROM log'),
      deleteLog: db.prepare('DELETE FROM log WHERE rev >= ? AND rev <= ?'),
    };
  }

  async get(key: string): Promise<KV | undefined> {
    this.checkOpen();
    const row = this.stmt.getKv.get(key);
    return row ? toKV(row) : undefined;
  }

  /**
   * At the current revision this reads `kv`. At an older revision R (compacted <= R < current)
   * it rebuilds the state from the log: keys untouched since R come from `kv`, every other key
   * takes the previous state recorded by its first write after R.
   */
  async list(prefix: string, options: ListOptions = {}): Promise<ListResult> {
    this.checkOpen();
    const limit = options.limit && options.limit > 0 ? Math.floor(options.limit) : 0;
    const requested = options.revision && options.revision > 0 ? options.revision : undefined;
    if (requested !== undefined) {
      if (requested < this.compacted) {
        throw new StoreError('Gone', `revision ${requested} has been compacted (compacted revision ${this.compacted})`);
      }
      if (requested > this.rev) {
        throw new StoreError('Gone', `revision ${requested} is newer than the store's revision ${this.rev}`);
      }
    }
    const past = requested !== undefined && requested < this.rev;
    const hi = prefixEnd(prefix);
    const after = options.startAfter;
    const stmt = this.listStatement(past, hi !== undefined, after !== undefined, limit > 0);
    const params: Record<string, string | number> = { lo: prefix };
    if (hi !== undefined) params.hi = hi;
    if (after !== undefined) params.after = after;
    if (limit > 0) params.limit = limit + 1; // one extra row tells whether more follow
    if (past) params.rev = requested;
    const rows = stmt.all(params) as KvRow[];
    const more = limit > 0 && rows.length > limit;
    if (more) rows.length = limit;
    return { items: rows.map(toKV), revision: past ? (requested as number) : this.rev, more };
  }

  async create(key: string, value: string): Promise<KV> {
    this.checkOpen();
    checkKey(key);
    const rev = this.rev + 1;
    this.commit(() => {
      if (this.stmt.getKv.get(key)) throw new StoreError('AlreadyExists', `key ${key} already exists`, key);
      this.stmt.insertKv.run(key, value, rev, rev);
      this.stmt.insertLog.run(rev, key, 'put', value, rev, null, null, null);
    }, rev);
    const kv: KV = { key, value, createRevision: rev, modRevision: rev };
    this.publish({ type: 'put', kv });
    return kv;
  }

  async update(key: string, value: string, expectedModRevision?: number): Promise<KV> {
    this.checkOpen();
    checkKey(key);
    const rev = this.rev + 1;
    let prev: KV | undefined;
    this.commit(() => {
      prev = this.current(key, expectedModRevision);
      this.stmt.updateKv.run(value, rev, key);
      this.stmt.insertLog.run(rev, key, 'put', value, prev.createRevision, prev.value, prev.createRevision, prev.modRevision);
    }, rev);
    const before = prev as KV;
    const kv: KV = { key, value, createRevision: before.createRevision, modRevision: rev };
    this.publish({ type: 'put', kv, prev: before });
    return kv;
  }

  async delete(key: string, expectedModRevision?: number): Promise<KV> {
    this.checkOpen();
    checkKey(key);
    const rev = this.rev + 1;
    let prev: KV | undefined;
    this.commit(() => {
      prev = this.current(key, expectedModRevision);
      this.stmt.deleteKv.run(key);
      this.stmt.insertLog.run(rev, key, 'delete', null, null, prev.value, prev.createRevision, prev.modRevision);
    }, rev);
    const before = prev as KV;
    const kv: KV = { ...before, modRevision: rev };
    this.publish({ type: 'delete', kv, prev: before });
    return kv;
  }

  watch(prefix: string, options: WatchOptions): Watch {
    if (!Number.isInteger(options.fromRevision) || options.fromRevision < 0) {
      throw new RangeError(`fromRevision must be a non-negative integer, got ${options.fromRevision}`);
    }
    const watcher = new SqliteWatcher(this.source, prefix, options, this.watchQueueLimit);
    if (this.closed) {
      watcher.delivery.fail(closedError());
    } else {
      this.watchers.add(watcher);
      watcher.delivery.kick();
    }
    return { close: () => watcher.delivery.close() };
  }

  async currentRevision(): Promise<number> {
    this.checkOpen();
    return this.rev;
  }

  /**
   * Marks history at or below `revision` as gone (immediately visible to lists and watches),
   * then deletes those log rows in small transactions, yielding in between. Compacting at or
   * below the compacted revision is a no-op; above the current revision is a RangeError.
   */
  async compact(revision: number): Promise<void> {
    this.checkOpen();
    if (!Number.isInteger(revision) || revision < 0) throw new RangeError(`invalid compaction revision ${revision}`);
    if (revision > this.rev) throw new RangeError(`cannot compact at ${revision}: current revision is ${this.rev}`);
    if (revision <= this.compacted) return;
    this.stmt.setCompacted.run(revision);
    this.compacted = revision;
    // Rows left behind by an interrupted compaction are never read (readers only look above
    // the compacted revision) and are removed by the next compact().
    let lo = this.stmt.minLogRev.get()?.rev ?? revision + 1;
    while (lo <= revision && !this.closed) {
      const hi = Math.min(lo + COMPACT_CHUNK - 1, revision);
      this.stmt.deleteLog.run(lo, hi);
      lo = hi + 1;
      if (lo <= revision) await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  async compactedRevision(): Promise<number> {
    this.checkOpen();
    return this.compacted;
  }

  /** Closes the file. Open watches end with onError(StoreError 'Unavailable'). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const w of [...this.watchers]) w.delivery.fail(closedError());
    this.watchers.clear();
    this.db.close();
  }

  /** Log events for keys under prefix with after < rev <= upTo, in revision order. */
  private readLog(prefix: string, after: number, upTo: number): WatchEvent[] {
    const hi = prefixEnd(prefix);
    const id = `${prefix === ''}${hi !== undefined}`;
    let stmt = this.logStatements.get(id);
    if (!stmt) {
      const range = prefix === '' ? '' : hi === undefined ? ' AND key >= @lo' : ' AND key >= @lo AND key < @hi';
      stmt = this.db.prepare(`SELECT * FROM log WHERE rev > @after AND rev <= @upTo${range} ORDER BY rev`);
      this.logStatements.set(id, stmt);
    }
    const params: Record<string, string | number> = { after, upTo };
    if (prefix !== '') params.lo = prefix;
    if (prefix !== '' && hi !== undefined) params.hi = hi;
    return (stmt.all(params) as LogRow[]).map(toEvent);
  }

  private checkOpen(): void {
    if (this.closed) throw closedError();
  }

  /** The key's current KV, checking the caller's precondition (inside a write transaction). */
  private current(key: string, expectedModRevision: number | undefined): KV {
    const row = this.stmt.getKv.get(key);
    if (!row) throw new StoreError('NotFound', `key ${key} not found`, key);
    if (expectedModRevision !== undefined && row.mod_rev !== expectedModRevision) {
      throw new StoreError('Conflict', `key ${key} is at revision ${row.mod_rev}, not ${expectedModRevision}`, key);
    }
    return toKV(row);
  }

  /** Runs one write transaction that produces revision `rev`; the cache moves only on commit. */
  private commit(fn: () => void, rev: number): void {
    try {
      this.txn.immediate(fn, rev);
    } catch (err) {
      if (isBusy(err)) throw new StoreError('Unavailable', `database busy: ${(err as Error).message}`);
      throw err;
    }
    this.rev = rev;
  }

  private publish(event: WatchEvent): void {
    for (const w of this.watchers) w.onCommit(event);
  }

  private listStatement(past: boolean, hasHi: boolean, hasAfter: boolean, hasLimit: boolean): Database.Statement {
    const id = `${past}${hasHi}${hasAfter}${hasLimit}`;
    let stmt = this.listStatements.get(id);
    if (stmt) return stmt;
    const range = (col: string) => `${col} >= @lo${hasHi ? ` AND ${col} < @hi` : ''}${hasAfter ? ` AND ${col} > @after` : ''}`;
    const tail = `ORDER BY key${hasLimit ? ' LIMIT @limit' : ''}`;
    const sql = past
      ? `SELECT key, value, create_rev, mod_rev FROM (
           SELECT key, value, create_rev, mod_rev FROM kv
            WHERE ${range('kv.key')}
              AND NOT EXISTS (SELECT 1 FROM log WHERE log.key = kv.key AND log.rev > @rev)
           UNION ALL
           SELECT l.key, l.prev_value, l.prev_create_rev, l.prev_mod_rev
             FROM (SELECT key, MIN(rev) AS first FROM log WHERE ${range('key')} AND rev > @rev GROUP BY key) AS c
             JOIN log AS l ON l.rev = c.first
            WHERE l.prev_value IS NOT NULL
         ) ${tail}`
      : `SELECT key, value, create_rev, mod_rev FROM kv WHERE ${range('key')} ${tail}`;
    stmt = this.db.prepare(sql);
    this.listStatements.set(id, stmt);
    return stmt;
  }
}

interface WatchSource {
  revision(): number;
  compacted(): number;
  readLog(prefix: string, after: number, upTo: number): WatchEvent[];
  unregister(watcher: SqliteWatcher): void;
}

/**
 * One watch. It starts by catching up from the log (REPLAY_CHUNK revisions per step) and,
 * once it has read up to the current revision, switches to live mode in the same synchronous
 * step, so no commit can fall between the two: from then on commits are pushed to it
 * directly. Invariant: every matching event with revision <= `scanned` is queued or delivered.
 */
class SqliteWatcher {
  readonly delivery: WatchDelivery;
  private scanned: number;
  /** Every matching event with revision <= `safe` has been delivered. */
  private safe: number;
  private live = false;

  constructor(
    private readonly store: WatchSource,
    private readonly prefix: string,
    options: WatchOptions,
    private readonly queueLimit: number,
  ) {
    this.scanned = this.safe = options.fromRevision;
    this.delivery = new WatchDelivery(
      {
        onEvent: (event) => {
          this.safe = event.kv.modRevision;
          options.onEvent(event);
        },
        onError: options.onError,
      },
      () => store.unregister(this),
      () => this.refill(),
    );
  }

  onCommit(event: WatchEvent): void {
    if (!this.live) return; // still catching up: the log has this event
    const rev = event.kv.modRevision;
    if (rev <= this.scanned) return; // fromRevision was ahead of the store
    this.scanned = rev;
    if (!event.kv.key.startsWith(this.prefix)) return;
    this.delivery.push(event);
    if (this.delivery.pending > this.queueLimit) {
      // Slow consumer: forget the queue and re-read from the log from where delivery stands.
      this.delivery.drop();
      this.live = false;
      this.scanned = this.safe;
      this.delivery.kick();
    }
  }

  /** Called by the delivery pump whenever the queue is empty. */
  private refill(): boolean {
    this.safe = this.scanned;
    if (this.live) return false;
    if (this.scanned < this.store.compacted()) {
      throw new StoreError('Gone', `revision ${this.scanned} has been compacted (compacted revision ${this.store.compacted()})`);
    }
    const current = this.store.revision();
    const upTo = Math.min(this.scanned + REPLAY_CHUNK, current);
    if (upTo > this.scanned) {
      for (const event of this.store.readLog(this.prefix, this.scanned, upTo)) this.delivery.push(event);
      this.scanned = upTo;
    }
    this.live = this.scanned >= current;
    return !this.live;
  }
}
