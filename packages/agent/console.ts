/**
 * Consoles on the agent's endpoint (the API server is the only caller; the endpoint has checked
 * its token already):
 *
 *   upgrade /v1/console/NS/NAME   websocket <-> the VM's serial.sock (raw bytes, binary frames)
 *   upgrade /v1/vnc/NS/NAME       websocket <-> the VM's vnc.sock (raw RFB)
 *   GET     /v1/serial-log/NS/NAME[?follow=true&tailBytes=N]   serial.log as text/plain
 *
 * QEMU serves one client per chardev socket and parks the next one until the first leaves, so a
 * new console connection takes over: the previous session is closed with a message saying why
 * (KubeVirt does the same). VNC needs no such rule: QEMU's VNC server takes several clients.
 * Errors before the upgrade are HttpErrors: the endpoint answers them as plain HTTP with a JSON
 * `{message}` body, which the API server turns into a Status.
 */
import { stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import WebSocket, { WebSocketServer, type RawData } from 'ws';
import { HttpError } from '@vessel/http';
import { probe, readFrom, runDirFiles } from './qemu/process.ts';

export interface ConsoleHandlerOptions {
  /** The run directory of a VM on this node, or undefined when the agent does not know it. */
  runDirFor(namespace: string, name: string): string | undefined;
  log?: (line: string) => void;
  /** How often a followed serial.log is polled for new output (default 200 ms). */
  pollMs?: number;
}

/** The endpoint routes to these (endpoint.ts) and answers what they throw (HttpError: its code). */
export interface ConsoleHandlers {
  /** GET /v1/serial-log/NS/NAME. */
  serialLog: (req: IncomingMessage, res: ServerResponse, namespace: string, name: string) => Promise<void>;
  /** upgrade /v1/console|vnc/NS/NAME; settles once the websocket is up (or the client left). */
  upgrade: (req: IncomingMessage, socket: Duplex, head: Buffer, kind: 'console' | 'vnc', namespace: string, name: string) => Promise<void>;
  /** Ends every console, VNC and followed log: upgraded sockets would otherwise keep the endpoint from closing. */
  close(): void;
}

/** Close reason a console session gets when a newer connection takes the serial port over. */
export const TAKEN_OVER_REASON = "another console connection took over this VM's serial console";

const PLAIN_PROTOCOL = 'plain.kubevirt.io';
const BINARY_PROTOCOL = 'binary.kubevirt.io';
/** Pause the unix socket while this much is queued towards a slow websocket reader. */
const HIGH_WATER = 1024 * 1024;
const CONNECT_TIMEOUT_MS = 5000;

interface Session {
  ws?: WebSocket;
  sock?: net.Socket;
  end(reason: string): void;
}

export function consoleHandlers(opts: ConsoleHandlerOptions): ConsoleHandlers {
  const log = opts.log ?? (() => {});
  const pollMs = opts.pollMs ?? 200;
  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    handleProtocols: (offered) => (offered.has(PLAIN_PROTOCOL) ? PLAIN_PROTOCOL : offered.has(BINARY_PROTOCOL) ? BINARY_PROTOCOL : false),
  });
  /** The console session per run directory: the newest one wins. */
  const consoles = new Map<string, Session>();
  const sessions = new Set<Session>();
  const follows = new Set<ServerResponse>();
  let closed = false;

  function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, kind: 'console' | 'vnc', ns: string, name: string): Promise<void> {
    socket.on('error', () => {}); // a client that resets mid-handshake is not our error
    return connect(kind, ns, name, req, socket, head);
  }

  async function connect(kind: 'console' | 'vnc', ns: string, name: string, req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    if (closed) throw new HttpError(503, 'the agent is shutting down');
    const runDir = opts.runDirFor(ns, name);
    if (!runDir) throw new HttpError(404, `VM ${ns}/${name} is not on this node`);
    if ((await probe(runDir)) === undefined) throw new HttpError(409, `VM ${ns}/${name} is not running on this node (no QEMU process)`);
    const files = runDirFiles(runDir);
    const session: Session = { end: () => {} };
    if (kind === 'console') {
      // Take over before connecting: QEMU would park our connection behind the old one.
      consoles.get(files.dir)?.end(TAKEN_OVER_REASON);
      consoles.set(files.dir, session);
    }
    let sock: net.Socket;
    try {
      sock = await connectUnix(
        kind === 'console' ? files.serial : files.vnc,
        kind === 'vnc' ? `VM ${ns}/${name} has no VNC display` : `the serial console of VM ${ns}/${name} is not available (QEMU is starting or stopping)`,
      );
    } catch (e) {
      if (consoles.get(files.dir) === session) consoles.delete(files.dir);
      throw e;
    }
    if (kind === 'console' && consoles.get(files.dir) !== session) {
      sock.destroy();
      throw new HttpError(409, TAKEN_OVER_REASON);
    }
    if (socket.destroyed) {
      if (consoles.get(files.dir) === session) consoles.delete(files.dir);
      sock.destroy();
      return;
    }
    let upgraded = false;
    wss.handleUpgrade(req, socket, head, (ws) => {
      upgraded = true;
      session.ws = ws;
      session.sock = sock;
      let reason =
        kind === 'console' ? `the serial console of VM ${ns}/${name} closed (the VM stopped)` : `the VNC display of VM ${ns}/${name} closed (the VM stopped)`;
      session.end = (why) => {
        reason = why;
        closeWs(ws, 1000, why);
        sock.destroy();
      };
      sessions.add(session);
      log(`agent ${kind} ${ns}/${name}: connected`);
      bridge(
        ws,
        sock,
        () => reason,
        () => {
          sessions.delete(session);
          if (consoles.get(files.dir) === session) consoles.delete(files.dir);
          log(`agent ${kind} ${ns}/${name}: disconnected`);
        },
      );
    });
    // handleUpgrade answers a broken handshake itself and never calls back.
    if (!upgraded) {
      if (consoles.get(files.dir) === session) consoles.delete(files.dir);
      sock.destroy();
    }
  }

  async function serialLog(req: IncomingMessage, res: ServerResponse, ns: string, name: string): Promise<void> {
    if (req.method !== 'GET') throw new HttpError(405, `${req.method} is not allowed on the serial log: use GET`);
    const url = new URL(req.url ?? '/', 'http://agent');
    const follow = ['true', '1'].includes(url.searchParams.get('follow') ?? '');
    const tail = url.searchParams.get('tailBytes');
    if (tail !== null && !/^\d+$/.test(tail)) throw new HttpError(400, 'tailBytes must be a non-negative integer');
    const runDir = opts.runDirFor(ns, name);
    if (!runDir || !(await isDir(runDir)))
      throw new HttpError(404, `VM ${ns}/${name} has no run directory on this node: it never ran here, or it was cleaned up`);
    await streamLog(runDir, res, follow, tail === null ? undefined : Number(tail));
  }

  /** Writes serial.log from the tail asked for; with follow, keeps polling until the client leaves or the run directory goes. */
  async function streamLog(runDir: string, res: ServerResponse, follow: boolean, tailBytes: number | undefined): Promise<void> {
    const file = runDirFiles(runDir).serialLog;
    let pos = tailBytes === undefined ? 0 : Math.max(0, (await sizeOf(file)) - tailBytes);
    res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-cache', 'X-Content-Type-Options': 'nosniff' });
    res.flushHeaders();
    let gone = false;
    res.on('close', () => {
      gone = true;
    });
    follows.add(res);
    try {
      for (;;) {
        const { data, truncated } = await readFrom(file, pos, 256 * 1024);
        if (truncated) {
          pos = 0;
          continue;
        } // a new launch rotated serial.log: go on with the new one
        if (data.length > 0) {
          pos += data.length;
          if (!res.write(data))
            await new Promise<void>((resolve) => {
              res.once('drain', resolve);
              res.once('close', resolve);
            });
          continue;
        }
        if (!follow || gone || closed) break;
        if (!(await isDir(runDir))) {
          // Whatever was written just before the directory went is already read.
          break;
        }
        await sleep(pollMs);
        if (gone || closed) break;
      }
    } finally {
      follows.delete(res);
    }
    if (!res.writableEnded) res.end();
  }

  function close(): void {
    closed = true;
    for (const s of sessions) s.end('the node agent is shutting down');
    for (const res of follows) res.end();
    for (const ws of wss.clients) ws.terminate();
  }

  return { serialLog, upgrade, close };
}

/**
 * Copies bytes both ways until either side ends, pausing the faster side when the other one
 * cannot keep up (VNC frame updates are large; a console paste can be too).
 */
function bridge(ws: WebSocket, sock: net.Socket, reason: () => string, done: () => void): void {
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    done();
  };
  sock.on('data', (chunk: Buffer) => {
    ws.send(chunk, { binary: true }, () => {
      if (sock.isPaused() && ws.bufferedAmount < HIGH_WATER / 2) sock.resume();
    });
    if (ws.bufferedAmount > HIGH_WATER) sock.pause();
  });
  ws.on('message', (data: RawData) => {
    if (!sock.writable) return;
    if (!sock.write(toBuffer(data))) ws.pause();
  });
  sock.on('drain', () => ws.resume());
  sock.on('error', () => {}); // 'close' follows and says the rest
  sock.on('close', () => {
    closeWs(ws, 1000, reason());
    finish();
  });
  ws.on('error', () => {});
  ws.on('close', () => {
    sock.destroy();
    finish();
  });
}

function closeWs(ws: WebSocket, code: number, reason: string): void {
  if (ws.readyState === WebSocket.OPEN) ws.close(code, truncateReason(reason));
}

/** A close reason must fit in 123 bytes. */
function truncateReason(reason: string): string {
  const buf = Buffer.from(reason);
  return buf.length <= 123
    ? reason
    : buf
        .subarray(0, 120)
        .toString('utf8')
        .replace(/\uFFFD+$/, '') + '...';
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function connectUnix(file: string, unavailable: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ path: file });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new HttpError(503, `${file} did not accept a connection within ${CONNECT_TIMEOUT_MS} ms: QEMU is hung or the host is overloaded`));
    }, CONNECT_TIMEOUT_MS);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      sock.destroy();
      reject(new HttpError(409, `${unavailable} (${err.code ?? err.message})`));
    });
  });
}

async function isDir(dir: string): Promise<boolean> {
  try {
    return (await stat(dir)).isDirectory();
  } catch {
    return false;
  }
}

async function sizeOf(file: string): Promise<number> {
  try {
    return (await stat(file)).size;
  } catch {
    return 0;
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
