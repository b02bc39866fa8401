/**
 * `vessel port-forward TYPE/NAME [LOCAL:]REMOTE...` (virtctl's verb): local TCP ports carried to
 * the guest's ports over KubeVirt's `portforward` subresource, one websocket per accepted
 * connection, through the API server and the VM's node agent (no route to the VM is needed).
 * TYPE is vm or vmi (a VM's port-forward reaches its VMI). `--stdio` makes stdin/stdout the
 * one stream instead (for ssh's ProxyCommand, as `virtctl port-forward --stdio`).
 */
import net from 'node:net';
import type { Command } from 'commander';
import WebSocket, { type RawData } from 'ws';
import { resourcePath, type Client, type KubeObject, type ResourceRef } from '@vessel/client';
import { contextOf, note, out } from '../context.ts';
import { formatError, UsageError } from '../errors.ts';
import { connectStream } from './console.ts';

const HIGH_WATER = 1024 * 1024;
const KINDS: Record<string, 'virtualmachines' | 'virtualmachineinstances'> = {
  vm: 'virtualmachines',
  vms: 'virtualmachines',
  virtualmachine: 'virtualmachines',
  virtualmachines: 'virtualmachines',
  vmi: 'virtualmachineinstances',
  vmis: 'virtualmachineinstances',
  virtualmachineinstance: 'virtualmachineinstances',
  virtualmachineinstances: 'virtualmachineinstances',
};

/** What a port-forward reaches: a VM or VMI by name (the namespace comes from -n or the context). */
export interface ForwardTarget {
  resource: 'virtualmachines' | 'virtualmachineinstances';
  name: string;
}

export interface PortSpec {
  local: number;
  remote: number;
}

/** `vm/NAME` or `vmi/NAME` (also the long kind names). */
export function parseTarget(arg: string): ForwardTarget {
  const slash = arg.indexOf('/');
  const resource = slash > 0 ? KINDS[arg.slice(0, slash).toLowerCase()] : undefined;
  const name = arg.slice(slash + 1);
  if (!resource || !name || name.includes('/')) throw new UsageError(`"${arg}" is not TYPE/NAME: use vm/NAME or vmi/NAME`);
  return { resource, name };
}

/** `[LOCAL:]REMOTE[/tcp]`, as kubectl and virtctl read it; LOCAL 0 picks a free port, no LOCAL means REMOTE. */
export function parsePortSpec(spec: string): PortSpec {
  const [ports, protocol] = spec.split('/', 2);
  if (protocol !== undefined && protocol.toLowerCase() !== 'tcp') {
    throw new UsageError(
      protocol.toLowerCase() === 'udp' ? `"${spec}": udp port-forward is not supported: only tcp` : `"${spec}": unknown protocol "${protocol}": use tcp`,
    );
  }
  const parts = ports.split(':');
  const num = (s: string, min: number) => {
    const n = /^\d{1,5}$/.test(s) ? Number(s) : NaN;
    if (!(n >= min && n <= 65535)) throw new UsageError(`"${spec}" is not [LOCAL:]REMOTE: ports are numbers from ${min} to 65535`);
    return n;
  };
  if (parts.length === 1) {
    const p = num(parts[0], 1);
    return { local: p, remote: p };
  }
  if (parts.length === 2) return { local: parts[0] === '' ? 0 : num(parts[0], 0), remote: num(parts[1], 1) };
  throw new UsageError(`"${spec}" is not [LOCAL:]REMOTE`);
}

const SUBRESOURCES = (plural: ForwardTarget['resource']): ResourceRef => ({ group: 'subresources.kubevirt.io', version: 'v1', plural, namespaced: true });

/** The websocket path of a target's port. */
export function forwardPath(namespace: string, t: ForwardTarget, port: number): string {
  return `${resourcePath(SUBRESOURCES(t.resource), namespace, t.name, 'portforward')}/${port}`;
}

/** One stream to the guest's `port` (paused: resume once listened to); rejects with the server's Status. */
export function openForward(client: Client, namespace: string, t: ForwardTarget, port: number): Promise<WebSocket> {
  return connectStream(client, forwardPath(namespace, t, port), `port ${port} of ${t.resource === 'virtualmachines' ? 'vm' : 'vmi'}/${t.name} in ${namespace}`);
}

interface Flags {
  address: string;
  stdio?: boolean;
}

export function registerPortForward(program: Command): void {
  program
    .command('port-forward')
    .description("forward local ports to a VM's ports through the API server (--stdio: stdin/stdout as the stream, for ssh ProxyCommand)")
    .argument('<target>', 'vm/NAME or vmi/NAME')
    .argument('<ports...>', '[LOCAL:]REMOTE[/tcp]: LOCAL defaults to REMOTE, 0 picks a free port; with --stdio only REMOTE')
    .option('--address <address>', 'local address to listen on', '127.0.0.1')
    .option('--stdio', 'use stdin and stdout as the stream to the one REMOTE port instead of listening')
    .action(async (targetArg: string, portArgs: string[], flags: Flags, cmd: Command) => {
      const target = parseTarget(targetArg);
      const specs = portArgs.map(parsePortSpec);
      const ctx = contextOf(cmd);
      const client = ctx.client();
      const namespace = ctx.namespace();
      if (flags.stdio) {
        if (specs.length !== 1) throw new UsageError('--stdio forwards exactly one port: vessel port-forward --stdio vm/NAME PORT');
        await stdio(await openForward(client, namespace, target, specs[0].remote));
        return;
      }
      // Fail fast (missing, forbidden, not running) instead of on the first local connection.
      await checkRunning(client, namespace, target);
      await listen(client, namespace, target, specs, flags.address);
    });
}

async function checkRunning(client: Client, namespace: string, t: ForwardTarget): Promise<void> {
  const ref = (plural: ForwardTarget['resource']): ResourceRef => ({ group: 'kubevirt.io', version: 'v1', plural, namespaced: true });
  if (t.resource === 'virtualmachines') await client.get(ref('virtualmachines'), t.name, { namespace });
  const vmi: KubeObject | undefined = await client.get(ref('virtualmachineinstances'), t.name, { namespace }).catch((e: unknown) => {
    if (t.resource === 'virtualmachines' && (e as { code?: number }).code === 404) return undefined;
    throw e;
  });
  const phase = (vmi?.status as { phase?: string } | undefined)?.phase;
  if (phase !== 'Running')
    throw new Error(
      `${t.resource === 'virtualmachines' ? 'VM' : 'VMI'} ${namespace}/${t.name} is not running (${vmi ? `phase ${phase ?? 'unknown'}` : 'no VMI: start it first'})`,
    );
}

/** One listener per port spec; serves until SIGINT/SIGTERM. */
async function listen(client: Client, namespace: string, t: ForwardTarget, specs: PortSpec[], address: string): Promise<void> {
  const servers: net.Server[] = [];
  const sockets = new Set<net.Socket>();
  const host = address.includes(':') ? `[${address}]` : address;
  for (const spec of specs) {
    const server = net.createServer((sock) => {
      sockets.add(sock);
      sock.on('close', () => sockets.delete(sock));
      proxy(client, namespace, t, spec.remote, sock);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => reject(new Error(`cannot listen on ${host}:${spec.local}: ${e.code ?? e.message}`)));
      server.listen(spec.local, address, () => {
        server.removeAllListeners('error');
        resolve();
      });
    });
    servers.push(server);
    out(`Forwarding from ${host}:${(server.address() as net.AddressInfo).port} -> ${spec.remote}\n`);
  }
  await new Promise<void>((resolve) => {
    const done = () => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      for (const s of sockets) s.destroy();
      let left = servers.length;
      for (const s of servers)
        s.close(() => {
          if (--left === 0) resolve();
        });
    };
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
}

/** One local connection: its bytes wait (paused) until the guest answered; a refusal is printed and the connection closed. */
function proxy(client: Client, namespace: string, t: ForwardTarget, port: number, sock: net.Socket): void {
  sock.pause();
  sock.on('error', () => {});
  openForward(client, namespace, t, port).then(
    (ws) => {
      if (sock.destroyed) {
        ws.close(1000);
        return;
      }
      note(`Handling connection for ${port}\n`);
      bridge(ws, sock, sock, () => sock.end());
    },
    (e: unknown) => {
      note(`error: port-forward to ${port}: ${formatError(e)}\n`);
      sock.destroy();
    },
  );
}

/** stdin/stdout as the stream; resolves when the guest closes it, rejects when it broke. */
function stdio(ws: WebSocket): Promise<void> {
  return new Promise((resolve, reject) => {
    // End of input does not end the stream: the guest's answer may still come (a piped request).
    bridge(ws, process.stdin, process.stdout, (clean) => {
      process.stdin.destroy();
      if (clean) resolve();
      else reject(new Error('the port-forward stream broke before the guest closed it'));
    });
  });
}

/** Bytes both ways with backpressure; `ended` runs once the websocket closed (clean: a normal close). */
function bridge(ws: WebSocket, from: NodeJS.ReadableStream & { isPaused(): boolean }, to: NodeJS.WritableStream, ended: (clean: boolean) => void): void {
  ws.on('message', (data: RawData) => {
    if (!to.write(toBuffer(data))) {
      ws.pause();
      to.once('drain', () => ws.resume());
    }
  });
  const onData = (chunk: Buffer | string) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    ws.send(chunk, { binary: true }, () => {
      if (from.isPaused() && ws.bufferedAmount < HIGH_WATER / 2) from.resume();
    });
    if (ws.bufferedAmount > HIGH_WATER) from.pause();
  };
  from.on('data', onData);
  // A local connection that went away ends its stream; stdin (also a net.Socket when piped)
  // does not: after a piped request the answer is still to come.
  const onClose = () => {
    if (ws.readyState === WebSocket.OPEN) ws.close(1000);
  };
  if (from instanceof net.Socket && from !== process.stdin) from.on('close', onClose);
  ws.on('error', () => {});
  ws.on('close', (code: number, reason: Buffer) => {
    from.off('data', onData);
    const clean = code === 1000 || code === 1001 || code === 1005;
    if (!clean && !(from instanceof net.Socket && from.destroyed)) note(`the port-forward stream closed${reason.length ? `: ${reason}` : ` (code ${code})`}\n`);
    ended(clean);
  });
  from.resume();
  ws.resume();
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}
