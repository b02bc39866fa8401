/**
 * The agent's HTTPS endpoint, which only the API server calls (it presents the cluster's
 * agent token, and pins this agent's certificate). Its routes, top to bottom:
 *
 *   HEAD|GET /v1/upload/NS/CLAIM   -> 200, Upload-Offset: bytes received so far
 *   POST|PUT /v1/upload/NS/CLAIM   Upload-Offset (default 0), Upload-Length (optional),
 *                                  X-Upload-Mode: sync (wait for the import) | async
 *   PUT      /v1/vmi/NS/NAME/pause|unpause|softreboot|reset   over QMP
 *   GET      /v1/serial-log/NS/NAME[?follow=true&tailBytes=N]
 *   GET      /v1/vmi/NS/NAME/guestosinfo|userlist|filesystemlist  from the guest agent (409 when it does not answer)
 *   PUT      /v1/vmi/NS/NAME/memorydump/CLAIM/FILE           starts a memory dump into the claim (vms/memory-dump.ts)
 *   GET      /v1/export/NS?path=FILE&format=raw|gzip         a volume's bytes for a VirtualMachineExport (storage/export.ts)
 *   GET      /v1/healthz                                    -> 200 {node, apiReachable}: peer agents' fencing check (fencing.ts)
 *   upgrade  /v1/console/NS/NAME, /v1/vnc/NS/NAME              (console.ts)
 *   upgrade  /v1/portforward/NS/NAME/PORT[/PROTOCOL]           (portforward.ts)
 *
 * Failures are answered in one place (`fail`): an HttpError with its code, an ImportError as
 * 413/400, a PortForwardError with its code and reason, anything else 500, always with a JSON
 * `{message, offset?, reason?}` body.
 */
import { timingSafeEqual } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { HttpError, Router, type Params } from '@vessel/http';
import type { ConsoleHandlers } from './console.ts';
import { PortForwardError, type PortForwardHandler } from './portforward.ts';
import { ImportError } from './storage/errors.ts';
import { UploadError } from './storage/upload.ts';
import type { VolumeManager } from './storage/volumes.ts';
import type { VmAction, VmRuntime } from './vms/runtime.ts';
import type { GuestInfoKind } from './qga/guest-info.ts';

export interface AgentEndpoint {
  port: number;
  close(): Promise<void>;
}

/** What the routes call. */
export interface EndpointDeps {
  volumes: Pick<VolumeManager, 'uploadStatus' | 'receive'>;
  vms: Pick<VmRuntime, 'act' | 'guestInfo' | 'memoryDump'>;
  consoles: Pick<ConsoleHandlers, 'serialLog' | 'upgrade'>;
  /** A volume's bytes for an export (`path` as an object recorded it); without it the route answers 404. */
  exportVolume?: (namespace: string, path: string, format: 'raw' | 'gzip', res: ServerResponse, signal: AbortSignal) => Promise<void>;
  /** Port-forward streams; without it the route answers 404. */
  portForward?: Pick<PortForwardHandler, 'upgrade'>;
  /** The node's name and whether its agent reaches the API server (what /v1/healthz answers). */
  nodeName?: string;
  apiReachable?: () => boolean;
  /** The token check (startEndpoint's); tests on plain HTTP leave it out. */
  authorized?: (req: IncomingMessage) => boolean;
  log?: (line: string) => void;
}

type HttpRoute = (req: IncomingMessage, res: ServerResponse, params: Params) => Promise<void>;
type UpgradeRoute = (req: IncomingMessage, socket: Duplex, head: Buffer, params: Params) => Promise<void>;

/** The endpoint's routes and their answers, without the TLS server (tests serve them over plain HTTP). */
export function agentRoutes(deps: EndpointDeps): {
  request(req: IncomingMessage, res: ServerResponse): void;
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
} {
  const http = new Router<HttpRoute>()
    .on(['HEAD', 'GET'], '/v1/upload/:namespace/:name', async (_req, res, { namespace, name }) => {
      const { offset } = await deps.volumes.uploadStatus(namespace, name);
      res.writeHead(200, { 'Upload-Offset': String(offset), 'Content-Length': '0' }).end();
    })
    .on(['POST', 'PUT'], '/v1/upload/:namespace/:name', async (req, res, { namespace, name }) => {
      const offset = intHeader(req, 'upload-offset') ?? 0;
      const length = intHeader(req, 'upload-length');
      const wait = req.headers['x-upload-mode'] !== 'async';
      const abort = new AbortController();
      req.on('aborted', () => abort.abort());
      const r = await deps.volumes.receive(namespace, name, req, { offset, length, wait, signal: abort.signal });
      if (r.done && wait) await r.done;
      reply(res, 200, { received: r.received, complete: r.complete });
    })
    .on('*', '/v1/upload/:namespace/:name', async (req) => {
      throw new HttpError(405, `${req.method} is not allowed here`);
    })
    .on('PUT', '/v1/vmi/:namespace/:name/:action(pause|unpause|softreboot|reset)', async (req, res, { namespace, name, action }) => {
      req.resume();
      await deps.vms.act(namespace, name, action as VmAction);
      reply(res, 200, { message: '' });
    })
    .on('GET', '/v1/vmi/:namespace/:name/:kind(guestosinfo|userlist|filesystemlist)', async (_req, res, { namespace, name, kind }) => {
      reply(res, 200, (await deps.vms.guestInfo(namespace, name, kind as GuestInfoKind)) as Record<string, unknown>);
    })
    .on('PUT', '/v1/vmi/:namespace/:name/memorydump/:claim/:file', async (req, res, { namespace, name, claim, file }) => {
      req.resume();
      await deps.vms.memoryDump(namespace, name, claim, file);
      reply(res, 202, { message: '' });
    })
    .on('GET', '/v1/export/:namespace', async (req, res, { namespace }) => {
      if (!deps.exportVolume) throw new HttpError(404, 'this agent does not serve exports');
      const q = new URL(req.url ?? '/', 'https://agent').searchParams;
      const path = q.get('path');
      const format = q.get('format') ?? 'raw';
      if (!path || (format !== 'raw' && format !== 'gzip')) throw new HttpError(400, 'path and format=raw|gzip are required');
      const abort = new AbortController();
      res.on('close', () => abort.abort());
      await deps.exportVolume(namespace, path, format, res, abort.signal);
    })
    .on('GET', '/v1/healthz', async (_req, res) => reply(res, 200, { node: deps.nodeName ?? '', apiReachable: deps.apiReachable?.() ?? true }))
    .on('*', '/v1/serial-log/:namespace/:name', (req, res, { namespace, name }) => deps.consoles.serialLog(req, res, namespace, name));
  const forward: UpgradeRoute = async (req, socket, head, { namespace, name, port, protocol }) => {
    if (!deps.portForward) throw new HttpError(404, 'this agent does not serve port-forward');
    await deps.portForward.upgrade(req, socket, head, namespace, name, port, protocol);
  };
  const upgrades = new Router<UpgradeRoute>()
    .on('*', '/v1/:kind(console|vnc)/:namespace/:name', (req, socket, head, { kind, namespace, name }) =>
      deps.consoles.upgrade(req, socket, head, kind as 'console' | 'vnc', namespace, name),
    )
    .on('*', '/v1/portforward/:namespace/:name/:port', forward)
    .on('*', '/v1/portforward/:namespace/:name/:port/:protocol', forward);

  return {
    request(req, res) {
      const serve = async () => {
        if (deps.authorized && !deps.authorized(req)) throw new HttpError(401, 'this endpoint is for the Vessel API server only');
        const m = http.match(req.method ?? 'GET', pathOf(req));
        if (!m) throw new HttpError(404, `no such agent path ${req.url}`);
        await m.handler(req, res, m.params);
      };
      serve().catch((e: unknown) => {
        // A body left unread (an upload cut off for its size) is not drained: the connection closes after the answer.
        if (!req.complete && !res.headersSent) res.setHeader('Connection', 'close');
        const { code, body } = fail(e, req, deps.log);
        if (res.headersSent)
          res.destroy(); // a stream (serial log) broke midway: the client must not take it as complete
        else reply(res, code, body);
      });
    },
    upgrade(req, socket, head) {
      if (deps.authorized && !deps.authorized(req)) {
        socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n');
        return;
      }
      const m = upgrades.match(req.method ?? 'GET', pathOf(req));
      if (!m) {
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
        return;
      }
      m.handler(req, socket, head, m.params).catch((e: unknown) => {
        const { code, body } = fail(e, req, deps.log);
        if (socket.destroyed || !socket.writable) {
          socket.destroy();
          return;
        }
        const data = JSON.stringify(body);
        socket.end(
          `HTTP/1.1 ${code} ${STATUS_CODES[code] ?? 'Error'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(data)}\r\nConnection: close\r\n\r\n${data}`,
        );
      });
    },
  };
}

export async function startEndpoint(
  opts: { host: string; port: number; certPem: string; keyPem: string; token: string } & EndpointDeps,
): Promise<AgentEndpoint> {
  const expected = Buffer.from(`Bearer ${opts.token}`);
  const authorized = (req: IncomingMessage) => {
    const got = Buffer.from(req.headers.authorization ?? '');
    return got.length === expected.length && timingSafeEqual(got, expected);
  };
  const routes = agentRoutes({ ...opts, authorized });
  const server: Server = createServer({ cert: opts.certPem, key: opts.keyPem }, (req, res) => routes.request(req, res));
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => routes.upgrade(req, socket, head));

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The one place a failure becomes the endpoint's answer: code and JSON body. */
function fail(e: unknown, req: IncomingMessage, log?: (line: string) => void): { code: number; body: Record<string, unknown> } {
  const code = e instanceof HttpError ? e.code : e instanceof ImportError ? (e.code === 'TooLarge' ? 413 : 400) : 500;
  // A guest that refuses or ignores a port-forward is the user's answer, not the agent's fault.
  const expected = e instanceof PortForwardError && (e.reason === 'GuestRefused' || e.reason === 'GuestTimeout');
  if (code >= 500 && !expected) log?.(`agent endpoint: ${req.method} ${req.url}: ${e instanceof Error ? e.stack : e}`);
  return {
    code,
    body: {
      message: e instanceof Error ? e.message : String(e),
      ...(e instanceof UploadError && e.offset !== undefined ? { offset: e.offset } : {}),
      ...(e instanceof ImportError ? { reason: e.code } : {}),
      ...(e instanceof PortForwardError ? { reason: e.reason } : {}),
    },
  };
}

function pathOf(req: IncomingMessage): string {
  return (req.url ?? '/').split('?')[0];
}

function intHeader(req: IncomingMessage, name: string): number | undefined {
  const v = req.headers[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^\d+$/.test(v)) throw new UploadError(400, `${name} must be a non-negative integer`);
  return Number(v);
}

/** A JSON answer (the endpoint's routes all answer this way). */
function reply(res: ServerResponse, code: number, body: Record<string, unknown>): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const data = JSON.stringify(body);
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(data)) }).end(data);
}
