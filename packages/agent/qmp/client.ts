/**
 * A small QMP client: JSON lines over QEMU's unix socket. connect() reads the greeting and
 * leaves capabilities-negotiation mode; execute() sends a command with an id and resolves with
 * the reply carrying that id, within a per-command time limit; asynchronous events are emitted
 * as 'event'. QEMU serves one QMP client per socket at a time, so an agent holds one client per
 * VM and a second connect waits (and times out) until the first one closes.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { isObject } from '@vessel/api';
import { QmpClosedError, QmpConnectError, QmpError, QmpProtocolError, QmpTimeoutError } from './errors.ts';

/** An asynchronous QMP event, e.g. STOP, RESUME, SHUTDOWN, MIGRATION, JOB_STATUS_CHANGE. */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** The greeting QEMU sends on connect. */
export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

const SECOND = 1000;

/**
 * Time limits (ms) per command. Queries and run-state changes only touch QEMU's main loop, so
 * a slow answer means QEMU is stuck; block and migration setup may wait for I/O to drain.
 * Long operations (mirror, commit, migration itself) run as jobs and answer at once: their end
 * comes as an event, which callers wait for with their own deadline.
 */
export const QMP_TIMEOUTS: Readonly<Record<string, number>> = Object.freeze({
  qmp_capabilities: 5 * SECOND,
  stop: 5 * SECOND,
  cont: 5 * SECOND,
  system_powerdown: 5 * SECOND,
  system_reset: 5 * SECOND,
  system_wakeup: 5 * SECOND,
  quit: 10 * SECOND,
  'human-monitor-command': 60 * SECOND,
  screendump: 30 * SECOND,
  device_add: 30 * SECOND,
  device_del: 30 * SECOND,
  netdev_add: 30 * SECOND,
  netdev_del: 30 * SECOND,
  'chardev-add': 30 * SECOND,
  'chardev-remove': 30 * SECOND,
  'blockdev-add': 30 * SECOND,
  'blockdev-del': 30 * SECOND,
  'blockdev-change-medium': 30 * SECOND,
  'blockdev-open-tray': 30 * SECOND,
  'blockdev-close-tray': 30 * SECOND,
  'blockdev-remove-medium': 30 * SECOND,
  'blockdev-insert-medium': 30 * SECOND,
  'blockdev-snapshot': 60 * SECOND,
  'blockdev-snapshot-sync': 60 * SECOND,
  'blockdev-create': 60 * SECOND,
  'blockdev-mirror': 60 * SECOND,
  'blockdev-backup': 60 * SECOND,
  'block-commit': 60 * SECOND,
  'block-stream': 60 * SECOND,
  block_resize: 60 * SECOND,
  'drive-mirror': 60 * SECOND,
  transaction: 60 * SECOND,
  'snapshot-save': 60 * SECOND,
  'snapshot-load': 60 * SECOND,
  'snapshot-delete': 60 * SECOND,
  'nbd-server-start': 30 * SECOND,
  'nbd-server-add': 30 * SECOND,
  'nbd-server-remove': 30 * SECOND,
  'nbd-server-stop': 30 * SECOND,
  'block-export-add': 30 * SECOND,
  'block-export-del': 30 * SECOND,
  migrate: 30 * SECOND,
  'migrate-incoming': 30 * SECOND,
  migrate_cancel: 30 * SECOND,
  'migrate-continue': 30 * SECOND,
  'migrate-recover': 30 * SECOND,
  'migrate-pause': 30 * SECOND,
  'migrate-start-postcopy': 30 * SECOND,
  'migrate-set-capabilities': 10 * SECOND,
  'migrate-set-parameters': 10 * SECOND,
});

/** Limits by prefix, for command families not listed one by one. */
const PREFIX_TIMEOUTS: readonly (readonly [string, number])[] = [
  ['query-', 5 * SECOND],
  ['block-job-', 30 * SECOND],
  ['job-', 30 * SECOND],
  ['migrate', 30 * SECOND],
  ['blockdev-', 30 * SECOND],
];

/** For commands in neither table. */
export const QMP_DEFAULT_TIMEOUT_MS = 15 * SECOND;

/** The time limit execute() uses for `command` when the caller gives none. */
export function defaultTimeoutFor(command: string, overrides?: Readonly<Record<string, number>>): number {
  const own = overrides?.[command] ?? QMP_TIMEOUTS[command];
  if (own !== undefined) return own;
  for (const [prefix, ms] of PREFIX_TIMEOUTS) if (command.startsWith(prefix)) return ms;
  return QMP_DEFAULT_TIMEOUT_MS;
}

export interface ConnectOptions {
  /** Limit for reaching the socket, the greeting and capability negotiation together (default 5 s). */
  timeoutMs?: number;
  /** Retry while the socket is missing or refuses (QEMU still starting), until timeoutMs. */
  waitForSocket?: boolean;
  /** Per-command limits that replace entries of QMP_TIMEOUTS for this client. */
  timeouts?: Readonly<Record<string, number>>;
}

export interface ExecuteOptions {
  /** Overrides the table; Infinity waits without limit. */
  timeoutMs?: number;
}

export interface WaitEventOptions {
  /** Default 30 s; Infinity waits without limit. */
  timeoutMs?: number;
  /** Only events this returns true for count (e.g. a JOB_STATUS_CHANGE for one job id). */
  match?: (ev: QmpEvent) => boolean;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

/** QMP messages are one JSON object per line; a reply or event this long means a broken peer. */
const MAX_LINE = 64 * 1024 * 1024;

export class QmpClient {
  readonly socketPath: string;
  private readonly socket: net.Socket;
  private readonly timeouts: Readonly<Record<string, number>> | undefined;
  private readonly emitter = new EventEmitter();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private buf = '';
  private scanFrom = 0;
  private closeReason: string | undefined;
  private callerReason: string | undefined;
  private greetingWaiter: ((g: QmpGreeting | Error) => void) | undefined;
  private greetingValue: QmpGreeting | undefined;
  private readonly closedPromise: Promise<void>;

  private constructor(socket: net.Socket, socketPath: string, timeouts: Readonly<Record<string, number>> | undefined) {
    this.socket = socket;
    this.socketPath = socketPath;
    this.timeouts = timeouts;
    socket.setEncoding('utf8'); // a StringDecoder: multi-byte characters split across chunks stay whole
    socket.on('data', (chunk: string) => this.onData(chunk));
    let socketError: Error | undefined;
    socket.on('error', (err) => (socketError = err));
    this.closedPromise = new Promise((resolve) => {
      socket.on('close', () => {
        this.onClose(this.callerReason ?? (socketError ? `socket error: ${socketError.message}` : 'QEMU closed the connection'));
        resolve();
      });
    });
  }

  /**
   * Connects to QEMU's QMP socket, reads the greeting and sends qmp_capabilities. Fails with
   * QmpConnectError when the socket cannot be reached or stays silent (QEMU hung, or another
   * client holds the socket), QmpProtocolError when the peer is not QMP.
   */
  static async connect(socketPath: string, opts: ConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 5 * SECOND;
    const deadline = Date.now() + timeoutMs;
    const socket = await openSocket(socketPath, deadline, timeoutMs, opts.waitForSocket ?? false);
    const client = new QmpClient(socket, socketPath, opts.timeouts);
    try {
      const greeting = await client.readGreeting(Math.max(1, deadline - Date.now()), timeoutMs);
      client.greetingValue = greeting;
      await client.execute('qmp_capabilities', undefined, { timeoutMs: Math.max(1, deadline - Date.now()) });
      return client;
    } catch (err) {
      socket.destroy();
      if (err instanceof QmpError) throw new QmpProtocolError(`QEMU at ${socketPath} refused qmp_capabilities: ${err.desc}`, { cause: err });
      if (err instanceof QmpTimeoutError) {
        throw new QmpConnectError(
          socketPath,
          `QMP at ${socketPath} did not finish capability negotiation within ${timeoutMs} ms: QEMU is hung or very busy; retry or kill the VM`,
          { cause: err },
        );
      }
      throw err;
    }
  }

  /** What QEMU said on connect (version, capabilities). */
  get greeting(): QmpGreeting {
    if (!this.greetingValue) throw new Error('QmpClient.greeting read before connect() finished');
    return this.greetingValue;
  }

  /** True once the socket closed; every later execute() rejects with QmpClosedError. */
  get closed(): boolean {
    return this.closeReason !== undefined;
  }

  /**
   * Sends `command` and resolves with its `return` value. Rejects with QmpError when QEMU
   * answers with an error, QmpTimeoutError after the command's limit (see defaultTimeoutFor),
   * QmpClosedError when the connection ends first.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: ExecuteOptions = {}): Promise<T> {
    if (this.closeReason !== undefined) return Promise.reject(new QmpClosedError(command, this.socketPath, this.closeReason));
    const id = this.nextId++;
    const timeoutMs = opts.timeoutMs ?? defaultTimeoutFor(command, this.timeouts);
    return new Promise<T>((resolve, reject) => {
      const entry: Pending = { command, resolve: resolve as (v: unknown) => void, reject, timer: undefined };
      if (Number.isFinite(timeoutMs)) {
        entry.timer = setTimeout(() => {
          // A late reply finds no entry and is dropped; the id is never reused.
          this.pending.delete(id);
          reject(new QmpTimeoutError(command, timeoutMs));
        }, timeoutMs);
      }
      this.pending.set(id, entry);
      const msg: Record<string, unknown> = { execute: command, id };
      if (args !== undefined) msg.arguments = args;
      this.socket.write(JSON.stringify(msg) + '\n');
    });
  }

  /**
   * Resolves with the next event named `event` (that `match` accepts). Create the promise
   * before sending the command that causes the event, or the event may come first.
   */
  waitForEvent(event: string, opts: WaitEventOptions = {}): Promise<QmpEvent> {
    const timeoutMs = opts.timeoutMs ?? 30 * SECOND;
    const what = `event ${event}`;
    if (this.closeReason !== undefined) return Promise.reject(new QmpClosedError(`wait for ${what}`, this.socketPath, this.closeReason));
    return new Promise<QmpEvent>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (ev: QmpEvent) => {
        if (ev.event !== event || (opts.match && !opts.match(ev))) return;
        done();
        resolve(ev);
      };
      const onClose = (reason: string) => {
        done();
        reject(new QmpClosedError(`wait for ${what}`, this.socketPath, reason));
      };
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          done();
          reject(new QmpTimeoutError(what, timeoutMs, 'did not arrive'));
        }, timeoutMs);
      }
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /** Every QMP event as it arrives. */
  on(name: 'event', listener: (ev: QmpEvent) => void): this;
  /** Once, when the connection has ended (after pending commands were rejected). */
  on(name: 'close', listener: (reason: string) => void): this;
  on(name: 'event' | 'close', listener: ((ev: QmpEvent) => void) | ((reason: string) => void)): this {
    this.emitter.on(name, listener);
    return this;
  }

  once(name: 'event', listener: (ev: QmpEvent) => void): this;
  once(name: 'close', listener: (reason: string) => void): this;
  once(name: 'event' | 'close', listener: ((ev: QmpEvent) => void) | ((reason: string) => void)): this {
    this.emitter.once(name, listener);
    return this;
  }

  off(name: 'event', listener: (ev: QmpEvent) => void): this;
  off(name: 'close', listener: (reason: string) => void): this;
  off(name: 'event' | 'close', listener: ((ev: QmpEvent) => void) | ((reason: string) => void)): this {
    this.emitter.off(name, listener);
    return this;
  }

  /** Closes the connection (QEMU keeps running); pending commands reject with QmpClosedError. */
  close(): Promise<void> {
    if (this.closeReason === undefined) {
      this.callerReason ??= 'closed by the client';
      this.socket.destroy();
    }
    return this.closedPromise;
  }

  private readGreeting(ms: number, totalMs: number): Promise<QmpGreeting> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.greetingWaiter = undefined;
        reject(
          new QmpConnectError(
            this.socketPath,
            `no QMP greeting from ${this.socketPath} within ${totalMs} ms: another client may hold the socket ` +
              `(QEMU serves one at a time; close it first), or QEMU is hung`,
          ),
        );
      }, ms);
      this.greetingWaiter = (g) => {
        clearTimeout(timer);
        this.greetingWaiter = undefined;
        if (g instanceof Error) reject(g);
        else resolve(g);
      };
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    // Only the new text can hold the next newline: big replies arrive in many chunks.
    let nl = this.buf.indexOf('\n', this.scanFrom);
    let start = 0;
    while (nl >= 0) {
      const line = this.buf.slice(start, nl).trim();
      start = nl + 1;
      if (line) this.onLine(line);
      if (this.socket.destroyed) return; // close() from a listener: drop the rest
      nl = this.buf.indexOf('\n', start);
    }
    this.buf = this.buf.slice(start);
    this.scanFrom = this.buf.length;
    if (this.buf.length > MAX_LINE) {
      this.callerReason ??= `a QMP message exceeded ${MAX_LINE} bytes without a newline`;
      this.socket.destroy();
    }
  }

  private onLine(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      return; // QEMU never sends this; skipping keeps one bad line from ending the session
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) return;
    const m = msg as Record<string, unknown>;
    if (this.greetingWaiter) {
      const g = m.QMP;
      if (typeof g === 'object' && g !== null) this.greetingWaiter(parseGreeting(g as Record<string, unknown>));
      else this.greetingWaiter(new QmpProtocolError(`${this.socketPath} did not greet like QMP (first message: ${line.slice(0, 200)}); is this a QMP socket?`));
      return;
    }
    if (typeof m.event === 'string') {
      const ev: QmpEvent = {
        event: m.event,
        data: isObject(m.data) ? m.data : {},
        timestamp: parseTimestamp(m.timestamp),
      };
      this.emit('event', ev);
      return;
    }
    if ('return' in m || 'error' in m) {
      // Replies without an id (QEMU's answer to unparsable input) match nothing we sent.
      if (typeof m.id !== 'number') return;
      const entry = this.pending.get(m.id);
      if (!entry) return;
      this.pending.delete(m.id);
      clearTimeout(entry.timer);
      if ('error' in m) {
        const e = isObject(m.error) ? m.error : {};
        entry.reject(new QmpError(entry.command, String(e.class ?? 'GenericError'), String(e.desc ?? 'no description')));
      } else {
        entry.resolve(m.return);
      }
    }
  }

  private emit(name: 'event' | 'close', arg: QmpEvent | string): void {
    try {
      this.emitter.emit(name, arg);
    } catch (err) {
      // A throwing listener must not stop us parsing the rest of the chunk; it still surfaces.
      process.nextTick(() => {
        throw err;
      });
    }
  }

  private onClose(reason: string): void {
    if (this.closeReason !== undefined) return;
    this.closeReason = reason;
    this.greetingWaiter?.(
      new QmpConnectError(this.socketPath, `${this.socketPath} closed before the QMP greeting (${reason}): QEMU may be exiting; see qemu.log`),
    );
    const entries = [...this.pending.values()];
    this.pending.clear();
    for (const entry of entries) {
      clearTimeout(entry.timer);
      entry.reject(new QmpClosedError(entry.command, this.socketPath, reason));
    }
    this.emit('close', reason);
  }
}

function parseTimestamp(v: unknown): QmpEvent['timestamp'] {
  const t = isObject(v) ? v : {};
  return { seconds: Number(t.seconds ?? 0), microseconds: Number(t.microseconds ?? 0) };
}

function parseGreeting(g: Record<string, unknown>): QmpGreeting {
  const version = isObject(g.version) ? g.version : {};
  const qemu = isObject(version.qemu) ? version.qemu : {};
  return {
    version: {
      qemu: { major: Number(qemu.major ?? 0), minor: Number(qemu.minor ?? 0), micro: Number(qemu.micro ?? 0) },
      package: String(version.package ?? ''),
    },
    capabilities: Array.isArray(g.capabilities) ? g.capabilities.map(String) : [],
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A connected socket, retrying missing/refusing sockets when asked (QEMU creates it during startup). */
async function openSocket(socketPath: string, deadline: number, timeoutMs: number, retry: boolean): Promise<net.Socket> {
  for (;;) {
    const left = deadline - Date.now();
    try {
      return await connectOnce(socketPath, Math.max(1, left));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const transient = code === 'ENOENT' || code === 'ECONNREFUSED';
      if (retry && transient && Date.now() + 50 < deadline) {
        await sleep(50);
        continue;
      }
      if (code === 'ETIMEDOUT') {
        throw new QmpConnectError(socketPath, `could not connect to QMP socket ${socketPath} within ${timeoutMs} ms: QEMU is hung or the host is overloaded`, {
          cause: err,
        });
      }
      const hint =
        code === 'ENOENT' || code === 'ECONNREFUSED'
          ? 'QEMU is not running for this VM (see qemu.log in its run directory)'
          : code === 'EACCES'
            ? 'the agent lacks permission on the run directory'
            : 'check that the path is a QEMU QMP socket';
      throw new QmpConnectError(socketPath, `cannot connect to QMP socket ${socketPath} (${code ?? (err as Error).message}): ${hint}`, { cause: err });
    }
  }
}

/**
 * One connection attempt to a QEMU chardev's unix socket (QMP, the guest agent), within `ms`.
 * Fails with the socket's error, or one with code ETIMEDOUT.
 */
export function connectOnce(socketPath: string, ms: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path: socketPath });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' }));
    }, ms);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      // Until the client attaches its own handler an 'error' must not crash the process;
      // the 'close' that follows it still reaches the client.
      socket.on('error', () => undefined);
      resolve(socket);
    });
    const onError = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    socket.once('error', onError);
  });
}
