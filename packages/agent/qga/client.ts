/**
 * A small client for the QEMU guest agent (qemu-ga in the guest), reached through the VM's
 * run-directory socket qga.sock, which QEMU connects to the virtio-serial port
 * org.qemu.guest_agent.0 (qemu/argv.ts gives every VM that channel).
 *
 * The protocol is QMP's JSON without greeting or capabilities: one command at a time, each
 * answered with `{"return": ...}` or `{"error": ...}`. The stream may hold stale output (an
 * answer to an earlier client, or to a command that timed out), so a client first sends 0xFF (the
 * agent's JSON parser resets on it) and guest-sync-delimited with a random id, and drops
 * everything until that id comes back; after a timeout it syncs again before the next command.
 * A guest without an agent never answers, so every command has a time limit. QEMU serves one
 * client per socket at a time: withAgent() and the functions built on it take turns per socket
 * within this process.
 */
import { randomInt } from 'node:crypto';
import type net from 'node:net';
import { isObject } from '@vessel/api';
import { QgaClosedError, QgaConnectError, QgaError, QgaTimeoutError } from './errors.ts';
import { connectOnce } from '../qmp/client.ts';

const SECOND = 1000;

/** Time limits (ms) per command when the caller gives none. */
export const QGA_TIMEOUTS: Readonly<Record<string, number>> = Object.freeze({
  'guest-sync-delimited': 5 * SECOND,
  'guest-sync': 5 * SECOND,
  'guest-ping': 5 * SECOND,
  'guest-info': 5 * SECOND,
  'guest-fsfreeze-status': 5 * SECOND,
  // Freezing writes every dirty page back first; KubeVirt allows a freeze a minute as well.
  'guest-fsfreeze-freeze': 60 * SECOND,
  'guest-fsfreeze-freeze-list': 60 * SECOND,
  'guest-fsfreeze-thaw': 30 * SECOND,
  // Trimming walks every free extent of every filesystem; slow on large disks.
  'guest-fstrim': 10 * 60 * SECOND,
});

/** What guest-fstrim did on one mount point. */
export interface FstrimResult {
  path: string;
  trimmed: number;
  error?: string;
}

/** For commands not in QGA_TIMEOUTS. */
export const QGA_DEFAULT_TIMEOUT_MS = 10 * SECOND;

/** ping()'s limit: an agent that is there answers within milliseconds, even under TCG. */
export const PING_TIMEOUT_MS = 1500;

/** guest-fsfreeze-status. */
export type FsfreezeStatus = 'thawed' | 'frozen';

export interface QgaConnectOptions {
  /** Limit for reaching the socket and the first sync together (default 5 s). */
  timeoutMs?: number;
}

export interface QgaExecuteOptions {
  /** Overrides QGA_TIMEOUTS. */
  timeoutMs?: number;
}

/** The agent resets its parser on this byte; guest-sync-delimited puts it before its answer. */
const DELIMITER = 0xff;
/** Longer than any answer we ask for: a peer sending more without closing its object is broken. */
const MAX_MESSAGE = 16 * 1024 * 1024;

/**
 * Cuts the agent's byte stream into JSON object texts: counts braces and brackets outside
 * strings, skips bytes between objects (newlines), and drops a partial object at 0xFF. Works on
 * bytes: 0xFF is not UTF-8, and the structural characters are ASCII, which UTF-8 never uses
 * inside a multi-byte character.
 */
export class MessageSplitter {
  private parts: Buffer[] = [];
  private size = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;

  constructor(private readonly onMessage: (text: string) => void) {}

  push(data: Buffer): void {
    let start = this.depth > 0 ? 0 : -1;
    for (let i = 0; i < data.length; i++) {
      const b = data[i];
      if (b === DELIMITER) {
        this.reset();
        start = -1;
        continue;
      }
      if (this.depth === 0) {
        if (b === 0x7b) {
          // {
          this.depth = 1;
          start = i;
        }
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (b === 0x5c)
          this.escaped = true; // backslash
        else if (b === 0x22) this.inString = false; // "
        continue;
      }
      if (b === 0x22) this.inString = true;
      else if (b === 0x7b || b === 0x5b) this.depth++;
      else if (b === 0x7d || b === 0x5d) {
        this.depth--;
        if (this.depth === 0) {
          this.parts.push(data.subarray(start, i + 1));
          const text = Buffer.concat(this.parts).toString('utf8');
          this.reset();
          start = -1;
          this.onMessage(text);
        }
      }
    }
    if (this.depth > 0 && start >= 0) {
      this.parts.push(data.subarray(start));
      this.size += data.length - start;
      if (this.size > MAX_MESSAGE) this.reset();
    }
  }

  private reset(): void {
    this.parts = [];
    this.size = 0;
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
  }
}

interface Waiter {
  command: string;
  id: number;
  /** A guest-sync-delimited: only `{"return": id}` ends it, everything else is stale. */
  sync: boolean;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

export class QgaClient {
  readonly socketPath: string;
  private readonly socket: net.Socket;
  private readonly splitter: MessageSplitter;
  private waiter: Waiter | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private synced = false;
  private nextId = randomInt(1, 2 ** 30);
  private closeReason: string | undefined;
  private callerReason: string | undefined;
  private readonly closedPromise: Promise<void>;

  private constructor(socket: net.Socket, socketPath: string) {
    this.socket = socket;
    this.socketPath = socketPath;
    this.splitter = new MessageSplitter((text) => this.onMessage(text));
    socket.on('data', (chunk: Buffer) => this.splitter.push(chunk));
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
   * Connects to the VM's qga.sock and syncs. Fails with QgaConnectError when the socket cannot be
   * reached (QEMU is not running), QgaTimeoutError when nothing answers (no agent in the guest,
   * the guest paused, or another client holds the socket).
   */
  static async connect(socketPath: string, opts: QgaConnectOptions = {}): Promise<QgaClient> {
    const timeoutMs = opts.timeoutMs ?? 5 * SECOND;
    const deadline = Date.now() + timeoutMs;
    const socket = await connectAgent(socketPath, timeoutMs);
    const client = new QgaClient(socket, socketPath);
    try {
      await client.sync(Math.max(1, deadline - Date.now()));
      return client;
    } catch (err) {
      await client.close();
      throw err;
    }
  }

  /** True once the socket closed; every later command rejects with QgaClosedError. */
  get closed(): boolean {
    return this.closeReason !== undefined;
  }

  /**
   * Drops whatever stale output the stream holds: 0xFF, then guest-sync-delimited with a random
   * id; answers until that id comes back are ignored. execute() does this itself when needed.
   */
  sync(timeoutMs = QGA_TIMEOUTS['guest-sync-delimited']): Promise<void> {
    return this.enqueue(() => this.doSync(timeoutMs));
  }

  /**
   * Sends `command` and resolves with its `return` value. Rejects with QgaError when the agent
   * answers with an error, QgaTimeoutError after the command's limit, QgaClosedError when the
   * connection ends first. Commands run one at a time, in call order.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QgaExecuteOptions = {}): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? QGA_TIMEOUTS[command] ?? QGA_DEFAULT_TIMEOUT_MS;
    return this.enqueue(async () => {
      if (!this.synced) await this.doSync(Math.min(timeoutMs, QGA_TIMEOUTS['guest-sync-delimited']));
      const id = this.nextId++;
      const msg: Record<string, unknown> = { execute: command, id };
      if (args !== undefined) msg.arguments = args;
      return (await this.send(command, id, false, JSON.stringify(msg) + '\n', timeoutMs)) as T;
    });
  }

  /** guest-ping: resolves when the agent answers. */
  async ping(timeoutMs?: number): Promise<void> {
    await this.execute('guest-ping', undefined, { timeoutMs });
  }

  /** guest-fsfreeze-status: 'frozen' while the guest's filesystems are frozen. */
  fsfreezeStatus(timeoutMs?: number): Promise<FsfreezeStatus> {
    return this.execute<FsfreezeStatus>('guest-fsfreeze-status', undefined, { timeoutMs });
  }

  /**
   * guest-fsfreeze-freeze: the agent flushes and freezes every mounted disk filesystem (FIFREEZE;
   * writers block until the thaw) and resolves with how many it froze. On a timeout the freeze
   * may still happen later: thaw anyway.
   */
  fsfreezeFreeze(timeoutMs?: number): Promise<number> {
    return this.execute<number>('guest-fsfreeze-freeze', undefined, { timeoutMs });
  }

  /** guest-fsfreeze-thaw: resolves with how many filesystems were thawed (0 when none was frozen). */
  fsfreezeThaw(timeoutMs?: number): Promise<number> {
    return this.execute<number>('guest-fsfreeze-thaw', undefined, { timeoutMs });
  }

  /**
   * guest-fstrim: the guest tells its disks which blocks its filesystems do not use, so they read
   * as zeros and copies leave them out. Bytes trimmed per mount point (`error` where it failed).
   */
  async fstrim(timeoutMs?: number): Promise<FstrimResult[]> {
    const r = await this.execute<{ paths?: { path: string; trimmed?: number; error?: string }[] }>('guest-fstrim', undefined, { timeoutMs });
    return (r.paths ?? []).map((p) => ({ path: p.path, trimmed: p.trimmed ?? 0, ...(p.error ? { error: p.error } : {}) }));
  }

  /** Closes the connection; a pending command rejects with QgaClosedError. */
  close(): Promise<void> {
    if (this.closeReason === undefined) {
      this.callerReason ??= 'closed by the client';
      this.socket.destroy();
    }
    return this.closedPromise;
  }

  private enqueue<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work, work);
    this.queue = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async doSync(timeoutMs: number): Promise<void> {
    const id = randomInt(1, 2 ** 31 - 1);
    const msg = JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n';
    await this.send('guest-sync-delimited', id, true, Buffer.concat([Buffer.from([DELIMITER]), Buffer.from(msg)]), timeoutMs);
    this.synced = true;
  }

  private send(command: string, id: number, sync: boolean, data: string | Buffer, timeoutMs: number): Promise<unknown> {
    if (this.closeReason !== undefined) return Promise.reject(new QgaClosedError(command, this.socketPath, this.closeReason));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { command, id, sync, resolve, reject, timer: undefined };
      waiter.timer = setTimeout(() => {
        if (this.waiter === waiter) this.waiter = undefined;
        // Its answer may still come: resync before the next command so it is dropped.
        this.synced = false;
        reject(new QgaTimeoutError(command, timeoutMs));
      }, timeoutMs);
      this.waiter = waiter;
      this.socket.write(data);
    });
  }

  private onMessage(text: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (!isObject(msg)) return;
    const w = this.waiter;
    if (!w) return; // stale: nobody asked
    if (w.sync) {
      // The answer to an earlier client or command, or the agent's complaint about the 0xFF.
      if (msg.return !== w.id) return;
    } else {
      if (!('return' in msg) && !('error' in msg)) return;
      // The agent echoes the id; an answer without one predates it (or is about unparsable input).
      if ('id' in msg && msg.id !== w.id) return;
    }
    this.waiter = undefined;
    clearTimeout(w.timer);
    if ('error' in msg) {
      const e = isObject(msg.error) ? msg.error : {};
      w.reject(new QgaError(w.command, String(e.class ?? 'GenericError'), String(e.desc ?? 'no description')));
    } else {
      w.resolve(msg.return);
    }
  }

  private onClose(reason: string): void {
    if (this.closeReason !== undefined) return;
    this.closeReason = reason;
    const w = this.waiter;
    this.waiter = undefined;
    if (w) {
      clearTimeout(w.timer);
      w.reject(new QgaClosedError(w.command, this.socketPath, reason));
    }
  }
}

/** Per socket: the last turn taken (QEMU serves one client at a time). */
const turns = new Map<string, Promise<void>>();

/**
 * Runs `work` with a fresh, synced connection to the agent behind `socketPath`, then closes it.
 * Callers in this process take turns per socket; `work` must not call withAgent for the same
 * socket (it would wait for itself).
 */
export async function withAgent<T>(socketPath: string, work: (client: QgaClient) => Promise<T>, opts: QgaConnectOptions = {}): Promise<T> {
  const before = turns.get(socketPath) ?? Promise.resolve();
  let done!: () => void;
  const released = new Promise<void>((resolve) => (done = resolve));
  const mine = before.then(() => released);
  turns.set(socketPath, mine);
  await before;
  try {
    const client = await QgaClient.connect(socketPath, opts);
    try {
      return await work(client);
    } finally {
      await client.close();
    }
  } finally {
    done();
    if (turns.get(socketPath) === mine) turns.delete(socketPath);
  }
}

/** True when an agent answers guest-ping through `socketPath` within the limit (default PING_TIMEOUT_MS). Never throws. */
export async function ping(socketPath: string, opts: { timeoutMs?: number } = {}): Promise<boolean> {
  const timeoutMs = opts.timeoutMs ?? PING_TIMEOUT_MS;
  try {
    await withAgent(socketPath, (c) => c.ping(timeoutMs), { timeoutMs });
    return true;
  } catch {
    return false;
  }
}

/** guest-fsfreeze-status over a connection of its own. */
export function fsfreezeStatus(socketPath: string, opts: QgaExecuteOptions = {}): Promise<FsfreezeStatus> {
  return withAgent(socketPath, (c) => c.fsfreezeStatus(opts.timeoutMs));
}

/** guest-fsfreeze-freeze over a connection of its own; the number of filesystems frozen. Pair it with fsfreezeThaw. */
export function fsfreezeFreeze(socketPath: string, opts: QgaExecuteOptions = {}): Promise<number> {
  return withAgent(socketPath, (c) => c.fsfreezeFreeze(opts.timeoutMs));
}

/** guest-fstrim over a connection of its own. */
export function fstrim(socketPath: string, opts: QgaExecuteOptions = {}): Promise<FstrimResult[]> {
  return withAgent(socketPath, (c) => c.fstrim(opts.timeoutMs));
}

/** guest-fsfreeze-thaw over a connection of its own; the number of filesystems thawed. */
export function fsfreezeThaw(socketPath: string, opts: QgaExecuteOptions = {}): Promise<number> {
  return withAgent(socketPath, (c) => c.fsfreezeThaw(opts.timeoutMs));
}

async function connectAgent(socketPath: string, ms: number): Promise<net.Socket> {
  try {
    return await connectOnce(socketPath, ms);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ETIMEDOUT')
      throw new QgaConnectError(socketPath, `could not connect to the guest agent socket ${socketPath} within ${ms} ms: the host is overloaded`);
    const hint =
      err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
        ? 'QEMU is not running for this VM, or was started without the guest agent channel'
        : err.code === 'EACCES'
          ? 'the agent lacks permission on the run directory'
          : "check that the path is the VM's qga.sock";
    throw new QgaConnectError(socketPath, `cannot connect to the guest agent socket ${socketPath} (${err.code ?? err.message}): ${hint}`, { cause: err });
  }
}
