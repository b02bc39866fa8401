/**
 * A byte relay for live migrations of VMs whose QEMU runs in a pod namespace (the masquerade
 * binding, network/pod.ts), where the node's fabric address does not exist: QEMU uses unix
 * sockets in its run directory (filesystem objects, so they cross network namespaces) and this
 * relay, running in the node's namespace, joins them to TCP on the fabric. Target: TCP on the
 * fabric address → QEMU's incoming unix socket; source: a unix socket QEMU connects to → the
 * target's TCP address. A plain pipe: TLS stays end to end between the two QEMUs.
 *
 * The relay is a small Node child process (started through `nsenter --net=` when the node has a
 * namespace of its own, as in the dev cluster; a Node process cannot move a socket into another
 * namespace). It exits when its stdin closes, so it never outlives the agent; it removes its
 * unix sockets on the way out, and one left by a killed relay is removed before listening again.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { inNetns } from '../network/exec.ts';

/** A TCP address (port 0: the kernel picks one) or a unix socket's path. */
export type Endpoint = { host: string; port: number } | { path: string };

export interface RelayRoute {
  listen: Endpoint;
  connect: Endpoint;
}

/** The relay's sockets in a VM's run directory (short names: a unix socket's path has 108 bytes). */
export const RELAY_SOCKETS = {
  /** Target: the incoming QEMU's migration socket. */
  incoming: 'mig.sock',
  /** Target: the incoming QEMU's NBD server (local disks). */
  nbd: 'nbd.sock',
  /** Source: where QEMU sends its migration stream. */
  outgoing: 'migout.sock',
  /** Source: where QEMU's NBD clients connect. */
  nbdOut: 'nbdout.sock',
} as const;

export class RelayError extends Error {
  readonly code = 'MigrationRelayFailed';
  constructor(message: string) {
    super(message);
    this.name = 'RelayError';
  }
}

/** Removes the relay sockets of a run directory (left by an agent or relay that was killed). */
export async function removeRelaySockets(runDir: string): Promise<void> {
  for (const name of Object.values(RELAY_SOCKETS)) await unlink(join(runDir, name)).catch(() => undefined);
}

/** `host:port` or `[v6]:port` as an Endpoint. */
export function parseHostPort(address: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(address);
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535) throw new RelayError(`${JSON.stringify(address)} is not host:port`);
  return { host: m[1], port };
}

/** `host:port` of a TCP endpoint (brackets around IPv6). */
export function formatHostPort(e: { host: string; port: number }): string {
  return `${e.host.includes(':') ? `[${e.host}]` : e.host}:${e.port}`;
}

const START_TIMEOUT_MS = 30_000;

export class MigrationRelay {
  private exited: Promise<void>;

  private constructor(
    private readonly child: ChildProcess,
    /** What each route listens on, in order (TCP ports as the kernel gave them). */
    readonly listening: Endpoint[],
    private readonly routes: readonly RelayRoute[],
  ) {
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
    });
  }

  /** Starts a relay for `routes` (in network namespace `netns` when given); throws RelayError. */
  static async start(routes: readonly RelayRoute[], opts: { netns?: string; log?: (line: string) => void } = {}): Promise<MigrationRelay> {
    if (!routes.length) throw new RelayError('a relay needs at least one route');
    let prefix: string[];
    try {
      prefix = inNetns(opts.netns);
    } catch (e) {
      throw new RelayError((e as Error).message);
    }
    const cmd = [...prefix, process.execPath, '-e', CHILD, JSON.stringify(routes)];
    const child = spawn(cmd[0], cmd.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => {
      err = (err + d.toString('utf8')).slice(-2000);
    });
    const listening = await new Promise<Endpoint[]>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => fail(`the relay did not start within ${START_TIMEOUT_MS / 1000} s`), START_TIMEOUT_MS);
      const fail = (why: string) => {
        clearTimeout(timer);
        child.kill('SIGKILL');
        reject(new RelayError(why));
      };
      child.once('error', (e) => fail(`cannot start the relay: ${e.message}`));
      child.once('exit', (code, signal) => fail(`the relay exited (${code ?? signal}) before listening: ${err.trim() || out.trim() || 'no message'}`));
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString('utf8');
        const nl = out.indexOf('\n');
        if (nl < 0) return;
        clearTimeout(timer);
        child.removeAllListeners('exit');
        let msg: { listening?: Endpoint[]; error?: string };
        try {
          msg = JSON.parse(out.slice(0, nl)) as typeof msg;
        } catch {
          return fail(`the relay said ${JSON.stringify(out.slice(0, 200))}`);
        }
        if (msg.listening) resolve(msg.listening);
        else fail(`the relay cannot listen: ${msg.error ?? 'no message'}`);
      });
    });
    child.stdout!.resume();
    child.once('exit', (code, signal) => {
      if (code !== 0) opts.log?.(`migration relay exited (${code ?? signal}): ${err.trim()}`);
    });
    return new MigrationRelay(child, listening, routes);
  }

  /** The TCP port route `i` listens on. */
  port(i: number): number {
    const e = this.listening[i];
    if (!e || !('port' in e)) throw new RelayError(`route ${i} does not listen on TCP`);
    return e.port;
  }

  /**
   * Ends the relay and removes its unix sockets. It stops listening at once; connections still
   * open may finish for `graceMs` (the tail of a stream the peer has not read yet must not be
   * dropped: the source QEMU says completed once it has written everything; a loaded target may
   * take long to read it), then are cut. A stream both ends closed ends at once, so the grace
   * only delays a hung one. Idempotent.
   */
  async close(graceMs = 60_000): Promise<void> {
    this.child.stdin?.end();
    const term = setTimeout(() => this.child.kill('SIGTERM'), graceMs);
    const kill = setTimeout(() => this.child.kill('SIGKILL'), graceMs + 2000);
    await this.exited;
    clearTimeout(term);
    clearTimeout(kill);
    for (const r of this.routes) if ('path' in r.listen) await unlink(r.listen.path).catch(() => undefined);
  }
}

/**
 * The child: argv[1] the routes. Says `{"listening": [...]}` (or `{"error"}`) on one line of
 * stdout, then pipes each accepted connection to a new connection of its route (half-closes
 * passed on, an error on either side ends both). When stdin closes it stops listening and
 * exits once its connections have ended; SIGTERM exits at once.
 */
const CHILD = `
const net = require('node:net');
const fs = require('node:fs');
const routes = JSON.parse(process.argv[1]);
let open = 0;
let closing = false;
const done = () => {
  for (const r of routes) if (r.listen.path) { try { fs.unlinkSync(r.listen.path); } catch {} }
  process.exit(0);
};
const drain = () => {
  closing = true;
  for (const s of servers) s.close();
  if (open === 0) done();
};
process.stdin.on('end', drain);
process.stdin.on('error', drain);
process.on('SIGTERM', done);
process.stdin.resume();
const servers = routes.map((r) => {
  if (r.listen.path) { try { fs.unlinkSync(r.listen.path); } catch {} }
  return net.createServer({ allowHalfOpen: true }, (a) => {
    const b = net.connect({ ...r.connect, allowHalfOpen: true });
    open++;
    let left = 2;
    const closed = () => { if (--left === 0 && --open === 0 && closing) done(); };
    a.once('close', closed);
    b.once('close', closed);
    const end = () => { a.destroy(); b.destroy(); };
    a.on('error', end);
    b.on('error', end);
    a.pipe(b);
    b.pipe(a);
  });
});
Promise.all(servers.map((s, i) => new Promise((resolve, reject) => {
  s.once('error', reject);
  const l = routes[i].listen;
  s.listen(l.path ? { path: l.path } : { host: l.host, port: l.port }, () => {
    if (l.path) fs.chmodSync(l.path, 0o600);
    const a = s.address();
    resolve(typeof a === 'string' ? { path: a } : { host: a.address, port: a.port });
  });
}))).then(
  (listening) => process.stdout.write(JSON.stringify({ listening }) + '\\n'),
  (e) => { process.stdout.write(JSON.stringify({ error: e.message }) + '\\n'); done(); },
);
`;
