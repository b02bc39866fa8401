/**
 * `vessel console NAME` (virtctl's verb): the serial console of a running VMI over KubeVirt's
 * console subresource. On a terminal stdin goes raw, so every key reaches the guest, and ^]
 * ends the session; without a terminal stdin and stdout are piped as they are (scripts and
 * tests drive it that way; ^] in the input ends it too, end of input does not, so output keeps
 * coming until ^], a signal, or the VM's console closes).
 */
import type { ConnectionOptions } from 'node:tls';
import type { Command } from 'commander';
import WebSocket, { type RawData } from 'ws';
import { ClientError, resourcePath, StatusError, statusErrorFrom, withQuery, type Client, type ResourceRef } from '@vessel/client';
import { contextOf, note } from '../context.ts';
import { UsageError } from '../errors.ts';

/** KubeVirt's raw byte stream; virtctl offers it for both console and VNC. */
export const PLAIN_STREAM_PROTOCOL = 'plain.kubevirt.io';
const SUBRESOURCE_VMI: ResourceRef = { group: 'subresources.kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const ESCAPE = 0x1d; // ^]

/**
 * Opens the websocket of a VMI subresource (console, vnc) with the kubeconfig's server, CA,
 * and credentials, paused: call resume() once a 'message' listener is attached. Rejects with
 * the server's Status (StatusError) when it refuses.
 */
export function connectSubresource(client: Client, namespace: string, name: string, subresource: 'console' | 'vnc'): Promise<WebSocket> {
  return connectStream(client, resourcePath(SUBRESOURCE_VMI, namespace, name, subresource), `the ${subresource} of ${namespace}/${name}`);
}

/** connectSubresource for any websocket path of the API server (port-forward's); `what` names it in errors. */
export function connectStream(client: Client, path: string, what: string): Promise<WebSocket> {
  const c = client.config;
  const url = new URL(path, c.server);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return new Promise((resolve, reject) => {
    // ws hands these to tls.connect, which also takes servername (its types do not say so).
    const tlsOptions: ConnectionOptions = {
      ca: c.caPem,
      rejectUnauthorized: !c.insecureSkipTlsVerify,
      servername: c.tlsServerName,
      cert: c.clientCertPem,
      key: c.clientKeyPem,
    };
    const ws = new WebSocket(url, [PLAIN_STREAM_PROTOCOL], {
      ...tlsOptions,
      headers: { 'User-Agent': 'vessel-cli', ...(c.token ? { Authorization: `Bearer ${c.token}` } : {}) },
      perMessageDeflate: false,
      handshakeTimeout: 60_000,
    });
    let settled = false;
    // Paused before anyone listens: the first frames (VNC's greeting) can arrive with the 101
    // and would be emitted before the caller's continuation runs.
    ws.once('open', () => {
      settled = true;
      ws.pause();
      resolve(ws);
    });
    ws.on('unexpected-response', (req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => {
        settled = true;
        reject(statusErrorFrom(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8')));
        req.destroy();
      });
    });
    ws.on('error', (e) => {
      if (settled) return;
      settled = true;
      reject(new ClientError('Unreachable', `cannot open ${what} at ${c.server}: ${e.message}`, { cause: e }));
    });
  });
}

/**
 * connectSubresource, retried while the VMI is not running yet (409) or its node is not
 * reachable yet (503), like virtctl's --timeout.
 */
export async function connectWhenRunning(
  client: Client,
  namespace: string,
  name: string,
  subresource: 'console' | 'vnc',
  timeoutMs: number,
): Promise<WebSocket> {
  const deadline = Date.now() + timeoutMs;
  let waiting = false;
  for (;;) {
    try {
      return await connectSubresource(client, namespace, name, subresource);
    } catch (e) {
      if (!(e instanceof StatusError && (e.code === 409 || e.code === 503)) || Date.now() >= deadline) throw e;
      if (!waiting) note(`Waiting for VMI ${namespace}/${name}: ${e.message}\n`);
      waiting = true;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

export function registerConsole(program: Command): void {
  program
    .command('console')
    .description('connect to the serial console of a VirtualMachineInstance (^] to leave)')
    .argument('<name>', 'VirtualMachineInstance name')
    .option('--timeout <minutes>', 'how long to wait for the VMI to be running', '5')
    .option('--history <bytes>', 'first show this much of what the guest printed while nobody was attached (0: none)', '16384')
    .action(async (name: string, opts: { timeout: string; history: string }, cmd: Command) => {
      const minutes = Number(opts.timeout);
      if (!Number.isFinite(minutes) || minutes < 0) throw new UsageError(`--timeout must be a number of minutes, not "${opts.timeout}"`);
      const ctx = contextOf(cmd);
      const ws = await connectWhenRunning(ctx.client(), ctx.namespace(), name, 'console', minutes * 60_000);
      note(`Successfully connected to ${name} console. The escape sequence is ^]\n`);
      const history = Number(opts.history);
      if (history > 0) {
        // The session is paused until session() runs: output arriving meanwhile waits, so the
        // boot so far comes first (a line may show twice at the seam; none is lost).
        const path = withQuery(resourcePath(SUBRESOURCE_VMI, ctx.namespace(), name, 'serial-log'), { tailBytes: history });
        const res = await ctx
          .client()
          .stream('GET', path)
          .catch(() => undefined); // the history is a courtesy: the live console still works
        if (res?.statusCode === 200) for await (const chunk of res) process.stdout.write(chunk as Buffer);
        else res?.resume();
      }
      await session(ws);
    });
}

/** Bytes from stdin to the console and back to stdout until ^], a signal, or the server closes. */
function session(ws: WebSocket): Promise<void> {
  const stdin = process.stdin;
  const raw = stdin.isTTY === true;
  return new Promise((resolve, reject) => {
    let leaving = false;
    const leave = () => {
      if (leaving) return;
      leaving = true;
      if (ws.readyState === WebSocket.OPEN) ws.close(1000);
      // A server that does not answer the close must not keep us here.
      setTimeout(() => ws.terminate(), 2000).unref();
    };
    const onInput = (chunk: Buffer) => {
      const at = chunk.indexOf(ESCAPE);
      const data = at >= 0 ? chunk.subarray(0, at) : chunk;
      if (data.length > 0 && ws.readyState === WebSocket.OPEN) ws.send(data, { binary: true });
      if (at >= 0) leave();
    };
    const cleanup = () => {
      stdin.off('data', onInput);
      if (raw) stdin.setRawMode(false);
      stdin.pause();
      process.off('SIGINT', leave);
      process.off('SIGTERM', leave);
    };
    if (raw) stdin.setRawMode(true);
    stdin.on('data', onInput);
    stdin.resume();
    // In raw mode ^C is a byte for the guest; a signal (non-TTY, or kill) leaves cleanly.
    process.on('SIGINT', leave);
    process.on('SIGTERM', leave);
    ws.on('message', (data: RawData) => {
      process.stdout.write(toBuffer(data));
    });
    ws.resume();
    ws.on('error', () => {}); // 'close' follows with the code
    ws.on('close', (code: number, reason: Buffer) => {
      cleanup();
      const why = reason.toString();
      if (leaving || code === 1000 || code === 1001) {
        if (why && !leaving) note(`\r\n${why}\r\n`);
        resolve();
      } else {
        reject(new ClientError('Unreachable', `the console connection ${why ? `closed: ${why}` : `broke (code ${code})`}`));
      }
    });
  });
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}
