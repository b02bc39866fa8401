/**
 * The agent's HTTPS endpoint, which only the API server calls (it presents the cluster's
 * agent token, and pins this agent's certificate): today the upload stream for a claim on
 * this node (`/v1/upload/<namespace>/<claim>`); consoles come next.
 *
 *   HEAD /v1/upload/ns/name   -> 200, Upload-Offset: bytes received so far
 *   POST /v1/upload/ns/name   Upload-Offset (default 0), Upload-Length (optional),
 *                              X-Upload-Mode: sync (wait for the import) | async
 */
import { timingSafeEqual } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { ImportError } from './storage/errors.ts';
import { UploadError } from './storage/upload.ts';
import type { VolumeManager } from './storage/volumes.ts';

export interface AgentEndpoint {
  port: number;
  /** More routes (consoles, serial log): each answers true when the request was its own. Called after the token check. */
  handlers: {
    request: ((req: IncomingMessage, res: ServerResponse) => Promise<boolean>)[];
    upgrade: ((req: IncomingMessage, socket: Duplex, head: Buffer) => boolean)[];
  };
  close(): Promise<void>;
}

export async function startEndpoint(opts: { host: string; port: number; certPem: string; keyPem: string; token: string; volumes: VolumeManager; log?: (l: string) => void }): Promise<AgentEndpoint> {
  const expected = Buffer.from(`Bearer ${opts.token}`);
  const handlers: AgentEndpoint['handlers'] = { request: [], upgrade: [] };
  const authorized = (req: IncomingMessage) => {
    const got = Buffer.from(req.headers.authorization ?? '');
    return got.length === expected.length && timingSafeEqual(got, expected);
  };
  const server: Server = createServer({ cert: opts.certPem, key: opts.keyPem }, (req, res) => {
    void handle(req, res).catch((e: unknown) => {
      const code = e instanceof UploadError ? e.httpCode : e instanceof ImportError ? (e.code === 'TooLarge' ? 413 : 400) : 500;
      // A body left unread (an upload cut off for its size) is not drained: the connection closes after the answer.
      if (!req.complete && !res.headersSent) res.setHeader('Connection', 'close');
      if (code >= 500) opts.log?.(`agent endpoint: ${req.method} ${req.url}: ${e instanceof Error ? e.stack : e}`);
      reply(res, code, { message: e instanceof Error ? e.message : String(e), ...(e instanceof UploadError && e.offset !== undefined ? { offset: e.offset } : {}), ...(e instanceof ImportError ? { reason: e.code } : {}) });
    });
  });

  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (!authorized(req)) { socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n'); return; }
    if (!handlers.upgrade.some((h) => h(req, socket, head))) socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!authorized(req)) throw new UploadError(401, 'this endpoint is for the Vessel API server only');
    const m = /^\/v1\/upload\/([^/]+)\/([^/?]+)$/.exec((req.url ?? '').split('?')[0]);
    if (!m) {
      for (const h of handlers.request) if (await h(req, res)) return;
      throw new UploadError(404, `no such agent path ${req.url}`);
    }
    const [ns, name] = [decodeURIComponent(m[1]), decodeURIComponent(m[2])];
    if (req.method === 'HEAD' || req.method === 'GET') {
      const { offset } = await opts.volumes.uploadStatus(ns, name);
      res.writeHead(200, { 'Upload-Offset': String(offset), 'Content-Length': '0' }).end();
      return;
    }
    if (req.method !== 'POST' && req.method !== 'PUT') throw new UploadError(405, `${req.method} is not allowed here`);
    const offset = intHeader(req, 'upload-offset') ?? 0;
    const length = intHeader(req, 'upload-length');
    const wait = req.headers['x-upload-mode'] !== 'async';
    const abort = new AbortController();
    req.on('aborted', () => abort.abort());
    const r = await opts.volumes.receive(ns, name, req, { offset, length, wait, signal: abort.signal });
    if (r.done && wait) await r.done;
    reply(res, 200, { received: r.received, complete: r.complete });
  }

  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(opts.port, opts.host, () => resolve()); });
  return {
    port: (server.address() as AddressInfo).port,
    handlers,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

function intHeader(req: IncomingMessage, name: string): number | undefined {
  const v = req.headers[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^\d+$/.test(v)) throw new UploadError(400, `${name} must be a non-negative integer`);
  return Number(v);
}

/** A JSON answer (the endpoint's routes all answer this way). */
export function reply(res: ServerResponse, code: number, body: Record<string, unknown>): void {
  if (res.headersSent) { res.end(); return; }
  const data = JSON.stringify(body);
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(data)) }).end(data);
}
