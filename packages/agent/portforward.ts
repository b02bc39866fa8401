/**
 * Port-forward on the agent's endpoint (KubeVirt's `portforward` subresource; the API server is
 * the only caller and has authorized the user):
 *
 *   upgrade /v1/portforward/NS/NAME/PORT[/tcp]   websocket <-> a TCP connection to the guest's PORT
 *
 * Frames are the raw byte stream both ways (binary, as KubeVirt's plain stream). The guest is
 * reached one of two ways:
 * - QEMU user networking (slirp), the default: over QMP a temporary host forward
 *   `127.0.0.1:<free port>` -> the guest's PORT is added to the NIC's netdev, connected to, and
 *   removed again as soon as the guest answered (the connection keeps its own socket), so no
 *   port stays open on the host. slirp accepts the host side before it knows whether the
 *   guest will: its connection table (`info usernet`) says when the guest answered, so a
 *   closed port fails the request with 502 instead of opening a stream that dies at once.
 * - the cluster network: connect to the guest's IP from inside the node's network namespace
 *   (dialGuest), when `guestAddress` names an address for the VMI.
 * The upgrade is completed only once the guest answered: every failure reaches the client as
 * an HTTP error with a stable `reason`.
 */
import { spawn } from 'node:child_process';
import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import { Duplex } from 'node:stream';
import WebSocket, { WebSocketServer, type RawData } from 'ws';
import { ipam } from '@vessel/api';
import { HttpError } from '@vessel/http';
import type { KubeObject } from '@vessel/runtime';
import { netdevId } from './qemu/argv.ts';
import type { QmpClient } from './qmp/client.ts';

/** Stable reasons a port-forward is refused with (the endpoint's JSON `reason`). */
export type PortForwardReason =
  'InvalidPort' | 'UnsupportedProtocol' | 'NotOnNode' | 'NotRunning' | 'NoPodInterface' | 'GuestRefused' | 'GuestTimeout' | 'ForwardFailed' | 'ShuttingDown';

export class PortForwardError extends HttpError {
  readonly reason: PortForwardReason;
  constructor(code: number, reason: PortForwardReason, message: string) {
    super(code, message);
    this.name = 'PortForwardError';
    this.reason = reason;
  }
}

export interface PortForwardOptions {
  /** The VMI `name` in `namespace` when it is on this node. */
  vmiFor(namespace: string, name: string): KubeObject | undefined;
  /** Its QEMU's QMP connection when it runs here. */
  qmpFor(namespace: string, name: string): QmpClient | undefined;
  /**
   * The guest's address on the cluster network, when its pod NIC is there (not slirp): then
   * dialGuest connects to it, inside `netns` when set. Undefined: slirp.
   */
  guestAddress?(vmi: KubeObject): string | undefined;
  /** The node's network namespace (`ip netns` name) the cluster network lives in. */
  netns?: string;
  /** How long the guest has to answer a connection (default 10 s). */
  answerTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface PortForwardHandler {
  /** upgrade /v1/portforward/NS/NAME/PORT[/PROTOCOL]; settles once the websocket is up (or the client left). */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, namespace: string, name: string, port: string, protocol?: string): Promise<void>;
  /** Ends every open stream (upgraded sockets would keep the endpoint from closing). */
  close(): void;
}

const PLAIN_PROTOCOL = 'plain.kubevirt.io';
const BINARY_PROTOCOL = 'binary.kubevirt.io';
const HIGH_WATER = 1024 * 1024;
const DEFAULT_ANSWER_MS = 10_000;
const POLL_MS = 40;

/** A port number from a path segment, or a 400. */
export function parsePort(port: string): number {
  const n = /^\d{1,5}$/.test(port) ? Number(port) : NaN;
  if (!(n >= 1 && n <= 65535)) throw new PortForwardError(400, 'InvalidPort', `invalid port "${port}": it must be a number from 1 to 65535`);
  return n;
}

/** `tcp` (also the default); udp is refused: slirp and the relay here carry streams only. */
export function checkProtocol(protocol: string | undefined): 'tcp' {
  const p = (protocol ?? 'tcp').toLowerCase();
  if (p === 'tcp') return 'tcp';
  if (p === 'udp') throw new PortForwardError(400, 'UnsupportedProtocol', 'port-forward of udp is not supported by Vessel: only tcp');
  throw new PortForwardError(400, 'UnsupportedProtocol', `unknown protocol "${protocol}": use tcp`);
}

export function portForwardHandler(opts: PortForwardOptions): PortForwardHandler {
  const log = opts.log ?? (() => {});
  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    handleProtocols: (offered) => (offered.has(PLAIN_PROTOCOL) ? PLAIN_PROTOCOL : offered.has(BINARY_PROTOCOL) ? BINARY_PROTOCOL : false),
  });
  const open = new Set<() => void>();
  let closed = false;

  async function upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, ns: string, name: string, portText: string, protocol?: string): Promise<void> {
    socket.on('error', () => {}); // a client that resets mid-handshake is not our error
    if (closed) throw new PortForwardError(503, 'ShuttingDown', 'the agent is shutting down');
    const port = parsePort(portText);
    checkProtocol(protocol);
    const vmi = opts.vmiFor(ns, name);
    if (!vmi) throw new PortForwardError(404, 'NotOnNode', `VM ${ns}/${name} is not on this node`);
    const qmp = opts.qmpFor(ns, name);
    if (!qmp || qmp.closed) throw new PortForwardError(409, 'NotRunning', `VM ${ns}/${name} is not running on this node (no QEMU process)`);
    const address = opts.guestAddress?.(vmi);
    let guest: GuestConnection;
    if (address) {
      guest = { stream: await dialGuest({ address, port, netns: opts.netns, timeoutMs: opts.answerTimeoutMs }), head: [] };
    } else {
      const nic = ipam.podInterface(vmi.spec);
      if (!nic) throw new PortForwardError(409, 'NoPodInterface', `VM ${ns}/${name} has no pod network interface: port-forward reaches a guest through it`);
      guest = await dialSlirp(qmp, netdevId(nic.name), port, opts.answerTimeoutMs ?? DEFAULT_ANSWER_MS);
    }
    if (socket.destroyed || closed) {
      guest.stream.destroy();
      return;
    }
    let upgraded = false;
    wss.handleUpgrade(req, socket, head, (ws) => {
      upgraded = true;
      const end = () => {
        guest.stream.destroy();
        ws.terminate();
      };
      open.add(end);
      log(`agent portforward ${ns}/${name}:${port}: connected${address ? ` to ${address}` : ''}`);
      pipe(ws, guest, () => {
        open.delete(end);
        log(`agent portforward ${ns}/${name}:${port}: closed`);
      });
    });
    if (!upgraded) guest.stream.destroy(); // handleUpgrade answered a broken handshake itself
  }

  return {
    upgrade,
    close() {
      closed = true;
      for (const end of open) end();
      for (const ws of wss.clients) ws.terminate();
    },
  };
}

/** A connection to the guest, and what it sent before the stream was handed over. */
export interface GuestConnection {
  stream: Duplex;
  head: Buffer[];
  /** The guest already ended its side (its bytes are all in `head`). */
  ended?: boolean;
}

/**
 * Connects to guest `port` through a temporary slirp host forward on `netdev`; resolves once
 * the guest answered (its bytes so far in `head`), rejects with 502 GuestRefused when it did
 * not, 504 GuestTimeout when it stayed silent.
 */
export async function dialSlirp(qmp: QmpClient, netdev: string, port: number, answerTimeoutMs = DEFAULT_ANSWER_MS): Promise<GuestConnection> {
  const hmp = (cmd: string) => qmp.execute<string>('human-monitor-command', { 'command-line': cmd });
  let hostPort = 0;
  // Our connection is told apart in slirp's table by the forward's port alone, so the port
  // must not show there already (a closed connection lingers in it for a while, and the
  // kernel likes to hand out the same free port again); and a free port can be taken between
  // our probe and QEMU's bind. Try a few.
  for (let attempt = 0; ; attempt++) {
    if (attempt >= 8) throw new PortForwardError(500, 'ForwardFailed', `QEMU could not forward a host port to guest port ${port}`);
    hostPort = await freePort();
    if (usernetMentions(await hmp('info usernet'), hostPort)) continue;
    const answer = await hmp(`hostfwd_add ${netdev} tcp:127.0.0.1:${hostPort}-:${port}`);
    if (!answer.trim()) break;
    if (attempt >= 2) throw new PortForwardError(500, 'ForwardFailed', `QEMU could not forward a host port to guest port ${port}: ${answer.trim()}`);
  }
  let sock: net.Socket | undefined;
  try {
    sock = await connectTcp('127.0.0.1', hostPort);
    const head: Buffer[] = [];
    let ended = false;
    const onData = (d: Buffer) => head.push(d);
    const onEnd = () => {
      ended = true;
    };
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    const deadline = Date.now() + answerTimeoutMs;
    for (;;) {
      if (head.length > 0) break; // it spoke: it answered
      const state = slirpState(await hmp('info usernet'), hostPort);
      if (state && state !== 'SYN_SENT') break;
      if (ended) throw refused(port); // closed without a word before the guest's SYN-ACK: a reset
      if (Date.now() >= deadline)
        throw new PortForwardError(
          504,
          'GuestTimeout',
          `the guest did not answer a connection to port ${port} within ${Math.round(answerTimeoutMs / 1000)} s (is a firewall dropping it?)`,
        );
      await sleep(POLL_MS);
    }
    sock.off('data', onData);
    sock.off('end', onEnd);
    sock.off('close', onEnd);
    sock.pause();
    return { stream: sock, head, ended };
  } catch (e) {
    sock?.destroy();
    throw e;
  } finally {
    // The stream keeps its own socket, which slirp has accepted by now (it shows in the
    // table, or passed data); the listening forward is not needed any more.
    await hmp(`hostfwd_remove ${netdev} tcp:127.0.0.1:${hostPort}`).catch(() => undefined);
  }
}

const refused = (port: number) => new PortForwardError(502, 'GuestRefused', `the guest refused the connection to port ${port} (nothing listens there?)`);

/**
 * The state slirp shows (`info usernet`) for the connection that came in through host port
 * `hostPort` (its forward listener is HOST_FORWARD, not it); undefined when there is none.
 */
export function slirpState(usernet: string, hostPort: number): string | undefined {
  for (const line of usernet.split(/\r?\n/)) {
    const m = /^\s*TCP\[([A-Z_0-9]+)\]\s+\d+\s+\S+\s+(\d+)\s/.exec(line);
    if (m && m[1] !== 'HOST_FORWARD' && Number(m[2]) === hostPort) return m[1];
  }
  return undefined;
}

/** Whether any TCP entry of slirp's table (forward or connection) has `hostPort` as its source port. */
function usernetMentions(usernet: string, hostPort: number): boolean {
  return usernet.split(/\r?\n/).some((line) => {
    const m = /^\s*TCP\[[A-Z_0-9]+\]\s+\d+\s+\S+\s+(\d+)\s/.exec(line);
    return m !== null && Number(m[1]) === hostPort;
  });
}

/**
 * A TCP connection to `address:port`; with `netns` from inside that network namespace (the
 * node's, where the cluster network lives): a small relay (`nsenter --net=/run/netns/NS --
 * node`) connects there and its stdin/stdout are the stream, since a Node process cannot
 * switch one socket into another namespace. Rejects with 502 GuestRefused, 504 GuestTimeout.
 */
export function dialGuest(o: { address: string; port: number; netns?: string; timeoutMs?: number }): Promise<Duplex> {
  const timeoutMs = o.timeoutMs ?? DEFAULT_ANSWER_MS;
  if (net.isIP(o.address) === 0) return Promise.reject(new TypeError(`dialGuest: not an IP address: ${JSON.stringify(o.address)}`));
  if (!o.netns) {
    return connectTcp(o.address, o.port, timeoutMs).catch((e: unknown) => {
      throw dialError(e, o.port, timeoutMs);
    });
  }
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(o.netns)) return Promise.reject(new TypeError(`dialGuest: bad network namespace name ${JSON.stringify(o.netns)}`));
  const child = spawn('nsenter', [`--net=/run/netns/${o.netns}`, '--', process.execPath, '-e', RELAY, o.address, String(o.port), String(timeoutMs)], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let err = '';
    const fail = (e: Error) => {
      child.kill('SIGKILL');
      reject(e);
    };
    const onErr = (d: Buffer) => {
      err += d.toString('utf8');
      const nl = err.indexOf('\n');
      if (nl < 0) return;
      child.stderr.off('data', onErr);
      child.off('exit', onExit);
      const line = err.slice(0, nl);
      if (line === 'CONNECTED') {
        child.stderr.resume();
        resolve(childStream(child));
        return;
      }
      const code = /^ERROR (\S+)/.exec(line)?.[1] ?? '';
      fail(dialError(Object.assign(new Error(line), { code }), o.port, timeoutMs));
    };
    const onExit = (code: number | null) =>
      fail(
        new PortForwardError(
          500,
          'ForwardFailed',
          `the relay into network namespace ${o.netns} exited (${code}) before connecting: ${err.trim() || 'no message'}`,
        ),
      );
    child.stderr.on('data', onErr);
    child.once('exit', onExit);
    child.once('error', (e) => fail(new PortForwardError(500, 'ForwardFailed', `cannot start nsenter: ${e.message}`)));
  });
}

/**
 * The relay run inside the namespace: argv address, port, timeout. It says CONNECTED or
 * `ERROR <code>` on stderr, then copies stdin to the socket and the socket to stdout.
 */
const RELAY = `
const net = require('node:net');
const [address, port, timeout] = process.argv.slice(1);
const s = net.connect({ host: address, port: Number(port) });
const t = setTimeout(() => { process.stderr.write('ERROR ETIMEDOUT\\n'); process.exit(1); }, Number(timeout));
s.once('error', (e) => { process.stderr.write('ERROR ' + (e.code || 'EIO') + ' ' + e.message + '\\n'); process.exit(1); });
s.once('connect', () => {
  clearTimeout(t);
  process.stderr.write('CONNECTED\\n');
  process.stdin.pipe(s);
  s.pipe(process.stdout);
  s.on('close', () => process.exit(0));
  process.stdin.on('end', () => s.end());
});
`;

function childStream(child: ReturnType<typeof spawn>): Duplex {
  const stream = Duplex.from({ readable: child.stdout!, writable: child.stdin! });
  stream.on('close', () => child.kill('SIGKILL'));
  child.once('exit', () => stream.destroy());
  return stream;
}

function dialError(e: unknown, port: number, timeoutMs: number): Error {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ETIMEDOUT')
    return new PortForwardError(504, 'GuestTimeout', `the guest did not answer a connection to port ${port} within ${Math.round(timeoutMs / 1000)} s`);
  if (code === 'ECONNREFUSED') return refused(port);
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') return new PortForwardError(502, 'GuestRefused', `the guest is unreachable from this node (${code})`);
  return e instanceof Error ? e : new Error(String(e));
}

function connectTcp(host: string, port: number, timeoutMs = 5000): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      sock.on('error', () => {});
      resolve(sock);
    });
    sock.once('error', (e) => {
      clearTimeout(timer);
      sock.destroy();
      reject(e);
    });
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Copies bytes both ways until either side ends, with backpressure; the guest's early bytes
 * (`head`) go first. A half-close from the client (websocket close) ends the TCP stream.
 */
function pipe(ws: WebSocket, guest: GuestConnection, done: () => void): void {
  const { stream } = guest;
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    done();
  };
  for (const chunk of guest.head) ws.send(chunk, { binary: true });
  stream.on('data', (chunk: Buffer) => {
    ws.send(chunk, { binary: true }, () => {
      if (stream.isPaused() && ws.bufferedAmount < HIGH_WATER / 2) stream.resume();
    });
    if (ws.bufferedAmount > HIGH_WATER) stream.pause();
  });
  ws.on('message', (data: RawData) => {
    if (!stream.writable) return;
    if (!stream.write(toBuffer(data))) ws.pause();
  });
  stream.on('drain', () => ws.resume());
  stream.on('error', () => {}); // 'close' follows
  const closeWs = () => {
    if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'the guest closed the connection');
    finish();
  };
  stream.on('end', closeWs);
  stream.on('close', closeWs);
  // A guest that answers and closes at once (a one-line service) may have ended the stream
  // while dialSlirp waited for its answer: no 'end' or 'close' is coming any more.
  if (guest.ended || stream.readableEnded || stream.destroyed) closeWs();
  ws.on('error', () => {});
  ws.on('close', () => {
    stream.destroy();
    finish();
  });
  stream.resume();
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
