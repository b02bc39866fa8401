/**
 * `vessel vnc NAME` (virtctl's verb): a local TCP port for a VNC viewer, each connection carried
 * over its own websocket to KubeVirt's VNC subresource (raw RFB). `--proxy-only` prints
 * `{"port":N}` like virtctl and serves until interrupted; otherwise a viewer (remote-viewer,
 * vncviewer) is started when one is installed, and the proxy ends with it.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import net from 'node:net';
import { delimiter, join } from 'node:path';
import type { Command } from 'commander';
import WebSocket, { type RawData } from 'ws';
import type { Client, KubeObject, ResourceRef } from '@vessel/client';
import { contextOf, note, out } from '../context.ts';
import { formatError, UsageError } from '../errors.ts';
import { connectSubresource } from './console.ts';

const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const HIGH_WATER = 1024 * 1024;

interface Flags {
  proxyOnly?: boolean;
  port: string;
  address: string;
}

export function registerVnc(program: Command): void {
  program
    .command('vnc')
    .description('open a VNC connection to a VirtualMachineInstance (or only a local proxy port with --proxy-only)')
    .argument('<name>', 'VirtualMachineInstance name')
    .option('--proxy-only', 'only listen on a local port and print it as JSON {"port":N}; start no viewer')
    .option('--port <port>', 'local port to listen on (0: any free port)', '0')
    .option('--address <address>', 'local address to listen on', '127.0.0.1')
    .action(async (name: string, flags: Flags, cmd: Command) => {
      const port = Number(flags.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be a port number, not "${flags.port}"`);
      const ctx = contextOf(cmd);
      const client = ctx.client();
      const namespace = ctx.namespace();
      // Fail fast (missing, forbidden, not running) instead of on the viewer's first connection.
      const vmi: KubeObject = await client.get(VMI, name, { namespace });
      const phase = (vmi.status as { phase?: string } | undefined)?.phase;
      if (phase !== 'Running') throw new Error(`VMI ${namespace}/${name} is not running (phase ${phase ?? 'unknown'})`);
      await serve(client, namespace, name, flags.address, port, !!flags.proxyOnly);
    });
}

async function serve(client: Client, namespace: string, name: string, address: string, port: number, proxyOnly: boolean): Promise<void> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    proxy(client, namespace, name, sock);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, address, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = (server.address() as net.AddressInfo).port;
  const host = address.includes(':') ? `[${address}]` : address;
  const stop = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  let viewer: ReturnType<typeof spawn> | undefined;
  if (proxyOnly) {
    out(JSON.stringify({ port: bound }) + '\n');
  } else {
    const found = findViewer();
    if (found) {
      note(`VNC proxy for ${namespace}/${name} on ${host}:${bound}; starting ${found.bin}\n`);
      viewer = spawn(found.path, found.args(host, bound), { stdio: 'ignore' });
    } else {
      note(`No VNC viewer found (remote-viewer, vncviewer): connect one to ${host}:${bound} (Ctrl-C to stop)\n`);
      out(`${host}:${bound}\n`);
    }
  }
  await new Promise<void>((resolve) => {
    const done = () => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      viewer?.kill();
      void stop().then(resolve);
    };
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
    viewer?.on('exit', done);
    viewer?.on('error', (e) => {
      note(`the VNC viewer failed: ${e.message}\n`);
      done();
    });
  });
}

/** One viewer connection: its bytes wait (paused) until the websocket is open. */
function proxy(client: Client, namespace: string, name: string, sock: net.Socket): void {
  sock.pause();
  sock.on('error', () => {});
  connectSubresource(client, namespace, name, 'vnc').then(
    (ws) => {
      if (sock.destroyed) {
        ws.close(1000);
        return;
      }
      ws.on('message', (data: RawData) => {
        if (!sock.write(toBuffer(data))) ws.pause();
      });
      sock.on('drain', () => ws.resume());
      sock.on('data', (chunk: Buffer) => {
        if (ws.readyState !== WebSocket.OPEN) return;
        ws.send(chunk, { binary: true }, () => {
          if (sock.isPaused() && ws.bufferedAmount < HIGH_WATER / 2) sock.resume();
        });
        if (ws.bufferedAmount > HIGH_WATER) sock.pause();
      });
      sock.on('close', () => {
        if (ws.readyState === WebSocket.OPEN) ws.close(1000);
      });
      ws.on('error', () => {});
      ws.on('close', (code: number, reason: Buffer) => {
        if (code !== 1000 && code !== 1001 && !sock.destroyed) note(`the VNC connection closed${reason.length ? `: ${reason}` : ` (code ${code})`}\n`);
        sock.end();
      });
      sock.resume();
      ws.resume();
    },
    (e: unknown) => {
      note(formatError(e) + '\n');
      sock.destroy();
    },
  );
}

interface Viewer {
  bin: string;
  path: string;
  args: (host: string, port: number) => string[];
}

/** The first VNC viewer in PATH: remote-viewer (virt-viewer, what virtctl starts on Linux), else vncviewer. */
function findViewer(): Viewer | undefined {
  const candidates: Omit<Viewer, 'path'>[] = [
    { bin: 'remote-viewer', args: (host, port) => [`vnc://${host}:${port}`] },
    { bin: 'vncviewer', args: (host, port) => [`${host}::${port}`] },
  ];
  for (const c of candidates) {
    for (const dir of (process.env.PATH ?? '').split(delimiter).filter(Boolean)) {
      const path = join(dir, c.bin);
      try {
        accessSync(path, constants.X_OK);
        return { ...c, path };
      } catch {
        // not here
      }
    }
  }
  return undefined;
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}
