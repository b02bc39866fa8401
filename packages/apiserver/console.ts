/**
 * KubeVirt's console, VNC and port-forward subresources, and Vessel's serial log:
 *
 *   upgrade /apis/subresources.kubevirt.io/v1/namespaces/NS/virtualmachineinstances/NAME/console
 *   upgrade .../vnc
 *   upgrade .../virtualmachineinstances/NAME/portforward/PORT[/tcp], the same under virtualmachines/NAME
 *   GET     .../serial-log[?follow=true&tailBytes=N]    (Vessel's; streams text/plain)
 *
 * (v1alpha3 too, as virt-api serves it). Access is KubeVirt's RBAC rule: `get` on
 * `virtualmachineinstances/console` (or `/vnc`, `/portforward`; `virtualmachines/portforward`
 * for a VM's) in `subresources.kubevirt.io`; the serial log counts as the console. A VM's
 * port-forward reaches the VMI of the same name, as KubeVirt's does. The server connects to the VMI's node agent first (its token, its
 * pinned certificate) and completes the client's upgrade only when the agent accepted, so every
 * failure reaches the client as an HTTP Status with the right code instead of a websocket that
 * opens and dies. Frames are raw bytes both ways (`plain.kubevirt.io`, what virtctl offers for
 * both; `binary.kubevirt.io`, what web VNC clients offer, is the same stream).
 */
import { request as httpsRequest } from 'node:https';
import { STATUS_CODES, type ClientRequestArgs, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import WebSocket, { WebSocketServer, type RawData } from 'ws';
import { findByResource } from '@vessel/api';
import type { Store } from '@vessel/store';
import { agentRefusal, agentTarget, type AgentTarget } from './agents.ts';
import { authenticate, authorize, type User } from './auth.ts';
import { ApiError, methodNotAllowed, toApiError, unauthorized } from './errors.ts';
import type { Resources } from './resources.ts';

export interface ConsoleDeps {
  store: Store;
  resources: Resources;
  log?: (line: string) => void;
}

/** Serves one console/VNC upgrade (answered either way: a websocket, or a Status). */
export interface ConsoleUpgrade {
  (req: IncomingMessage, socket: Duplex, head: Buffer, target: StreamTarget): void;
  /** Ends every open session (upgraded sockets would keep the HTTPS server from closing). */
  close(): void;
}

export const PLAIN_STREAM_PROTOCOL = 'plain.kubevirt.io';
export const BINARY_STREAM_PROTOCOL = 'binary.kubevirt.io';
export const SUBRESOURCES_GROUP = 'subresources.kubevirt.io';
/** Kubernetes' way for browsers, which cannot set Authorization on a websocket, to send a bearer token. */
const BEARER_PROTOCOL_PREFIX = 'base64url.bearer.authorization.k8s.io.';

const VMI = findByResource('kubevirt.io', 'v1', 'virtualmachineinstances')!;
const HIGH_WATER = 1024 * 1024;
/** Idle websockets die in proxies and NATs; a ping now and then keeps them open. */
const PING_MS = 30_000;

/** The VMI and stream a console, VNC, port-forward or serial-log request names (server.ts routes them here). */
export interface StreamTarget {
  namespace: string;
  name: string;
  subresource: 'console' | 'vnc' | 'serial-log' | 'portforward';
  /** Whose subresource it is (port-forward is served for VMs too); default the VMI's. */
  resource?: 'virtualmachines' | 'virtualmachineinstances';
  /** port-forward: the guest's port and protocol, as the path had them. */
  port?: string;
  protocol?: string;
}

const VM = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;

export function consoleUpgrade(deps: ConsoleDeps): ConsoleUpgrade {
  const wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    handleProtocols: (offered) => [...offered].find((p) => p === PLAIN_STREAM_PROTOCOL || p === BINARY_STREAM_PROTOCOL) ?? false,
  });
  const open = new Set<WebSocket>();

  const upgrade = (req: IncomingMessage, socket: Duplex, head: Buffer, t: StreamTarget): void => {
    socket.on('error', () => {}); // a client that resets mid-handshake is not a server error
    connect(req, socket, head, t).catch((e: unknown) => {
      const err = toApiError(e);
      // 502/504 from a port-forward: the guest refused or stayed silent, which the client is told.
      const guestAnswer = t.subresource === 'portforward' && (err.code === 502 || err.code === 504) && /^the guest /.test(err.message);
      if (err.code >= 500 && !guestAnswer) deps.log?.(`${t.subresource} ${t.namespace}/${t.name}: ${e instanceof Error ? e.stack : e}`);
      rejectUpgrade(socket, err);
    });
  };

  async function connect(req: IncomingMessage, socket: Duplex, head: Buffer, t: StreamTarget): Promise<void> {
    if (req.method !== 'GET') throw methodNotAllowed(req.method ?? '', req.url ?? '');
    if (t.subresource === 'portforward') checkForward(t);
    const nodeName = await admit(deps, req, t);
    const target = await agentTarget(deps.resources, nodeName);
    const forward = t.subresource === 'portforward' ? `/${t.port}/${(t.protocol ?? 'tcp').toLowerCase()}` : '';
    const agent = await dialAgent(target, nodeName, `/v1/${t.subresource}/${encodeURIComponent(t.namespace)}/${encodeURIComponent(t.name)}${forward}`, socket);
    if (!agent) return; // the client went away meanwhile
    // The agent's websocket comes paused: its frames wait until the client's side is ready.
    let upgraded = false;
    wss.handleUpgrade(req, socket, head, (client) => {
      upgraded = true;
      open.add(client);
      deps.log?.(`${t.subresource} ${t.namespace}/${t.name}${t.port ? `:${t.port}` : ''}: connected through node ${nodeName}`);
      relay(client, agent, () => open.delete(client));
      agent.resume();
    });
    if (!upgraded) agent.terminate(); // a broken handshake: handleUpgrade answered it
  }

  return Object.assign(upgrade, {
    close() {
      for (const ws of open) ws.terminate();
    },
  });
}

/**
 * GET .../virtualmachineinstances/NAME/serial-log: everything the guest printed on its serial
 * console (kept by the node across reboots), streamed from the node; `follow=true` keeps it
 * coming. A plain (not upgraded) request for console or VNC is a 400 saying a websocket is
 * needed.
 */
export async function serialLog(deps: ConsoleDeps, req: IncomingMessage, res: ServerResponse, path: string, t: StreamTarget): Promise<void> {
  if (t.subresource !== 'serial-log') {
    // console, vnc and portforward exist only as websockets (the upgrade listener serves them).
    const verb = t.subresource === 'portforward' ? 'port-forward' : t.subresource;
    const plural = t.resource ?? VMI.plural;
    throw new ApiError(
      400,
      'BadRequest',
      `${plural}/${t.subresource} of "${t.name}" is a websocket stream: send the request with "Connection: Upgrade" and "Upgrade: websocket" (as virtctl ${verb} and vessel ${verb} do)`,
      { name: t.name, group: SUBRESOURCES_GROUP, kind: `${plural}/${t.subresource}` },
    );
  }
  if (req.method !== 'GET') throw methodNotAllowed(req.method ?? '', path);
  const nodeName = await admit(deps, req, t, false);
  const target = await agentTarget(deps.resources, nodeName);
  const query = new URL(req.url ?? '/', 'https://vessel').searchParams;
  const forward = new URLSearchParams();
  for (const key of ['follow', 'tailBytes']) {
    const v = query.get(key);
    if (v !== null) forward.set(key, v);
  }
  const tail = forward.get('tailBytes');
  if (tail !== null && !/^\d+$/.test(tail)) throw new ApiError(400, 'BadRequest', `invalid tailBytes "${tail}": it must be a non-negative integer`);
  const agentPath = `/v1/serial-log/${encodeURIComponent(t.namespace)}/${encodeURIComponent(t.name)}${forward.toString() ? `?${forward}` : ''}`;
  await new Promise<void>((resolve, reject) => {
    const out = httpsRequest(
      {
        host: target.host,
        port: target.port,
        method: 'GET',
        path: agentPath,
        headers: { Authorization: `Bearer ${target.token}` },
        ...target.tls,
      },
      (agentRes) => {
        const code = agentRes.statusCode ?? 502;
        if (code >= 400) {
          readAll(agentRes).then((text) => reject(agentRefusal('stream', code, text, nodeName)), reject);
          return;
        }
        res.writeHead(200, {
          'Content-Type': agentRes.headers['content-type'] ?? 'text/plain; charset=utf-8',
          'Cache-Control': 'no-cache',
          'X-Content-Type-Options': 'nosniff',
        });
        res.flushHeaders();
        agentRes.pipe(res);
        agentRes.on('end', resolve);
        agentRes.on('error', () => {
          res.destroy();
          resolve();
        });
        agentRes.on('aborted', () => {
          res.destroy();
          resolve();
        });
      },
    );
    out.on('error', (e) => reject(e instanceof ApiError ? e : new ApiError(502, 'InternalError', `cannot reach the agent of node ${nodeName}: ${e.message}`)));
    // A follower that hangs up ends the agent's follow too.
    res.on('close', () => {
      out.destroy();
      resolve();
    });
    out.end();
  });
}

/**
 * Answers an upgrade request with a Status instead of a websocket. Also for the server's
 * upgrade listener to refuse paths nobody serves.
 */
export function rejectUpgrade(socket: Duplex, err: ApiError): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(err.toStatus());
  socket.end(
    `HTTP/1.1 ${err.code} ${STATUS_CODES[err.code] ?? 'Error'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/** A port-forward's port and protocol, checked before anything is looked up (400s). */
function checkForward(t: StreamTarget): void {
  const port = /^\d{1,5}$/.test(t.port ?? '') ? Number(t.port) : NaN;
  if (!(port >= 1 && port <= 65535)) throw new ApiError(400, 'BadRequest', `invalid port "${t.port}": it must be a number from 1 to 65535`);
  const protocol = (t.protocol ?? 'tcp').toLowerCase();
  if (protocol === 'udp') throw new ApiError(400, 'BadRequest', 'port-forward of udp is not supported by Vessel: only tcp');
  if (protocol !== 'tcp') throw new ApiError(400, 'BadRequest', `unknown protocol "${t.protocol}": use tcp`);
}

/** Authenticates and authorizes the caller, and returns the node of the VMI (which must be running for console/VNC/port-forward). */
async function admit(deps: ConsoleDeps, req: IncomingMessage, t: StreamTarget, mustRun = true): Promise<string> {
  const user: User | undefined = await authenticate(deps.store, authorizationOf(req));
  if (!user) throw unauthorized();
  const resource = t.resource ?? VMI.plural;
  authorize(user, {
    verb: 'get',
    group: SUBRESOURCES_GROUP,
    resource,
    subresource: t.subresource === 'serial-log' ? 'console' : t.subresource,
    namespace: t.namespace,
    name: t.name,
  });
  const notRunning = (why: string) =>
    new ApiError(409, 'Conflict', `Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io "${t.name}": VMI is not running${why}`, {
      name: t.name,
      group: VMI.group,
      kind: 'virtualmachineinstances',
    });
  let vmi;
  if (resource === VM.plural) {
    await deps.resources.get(VM, t.namespace, t.name); // a missing VM is a 404 on the VM
    try {
      vmi = await deps.resources.get(VMI, t.namespace, t.name);
    } catch (e) {
      if (e instanceof ApiError && e.code === 404) throw notRunning(': the VM has no VMI (start it first)');
      throw e;
    }
  } else {
    vmi = await deps.resources.get(VMI, t.namespace, t.name);
  }
  const status = (vmi.status ?? {}) as { phase?: string; nodeName?: string; conditions?: Array<{ type?: string; status?: string }> };
  if (mustRun && status.phase !== 'Running') throw notRunning(status.phase ? ` (phase ${status.phase})` : ' (it has no phase yet)');
  // KubeVirt refuses a paused VMI's port-forward: nothing in the guest would answer.
  if (t.subresource === 'portforward' && status.conditions?.some((c) => c.type === 'Paused' && c.status === 'True')) {
    throw new ApiError(409, 'Conflict', `Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io "${t.name}": VMI is paused`, {
      name: t.name,
      group: VMI.group,
      kind: 'virtualmachineinstances',
    });
  }
  if (!status.nodeName) throw notRunning(': it has not been scheduled to a node yet (status.nodeName is empty)');
  return status.nodeName;
}

/** The Authorization header, or the bearer token a browser put into its subprotocols. */
function authorizationOf(req: IncomingMessage): string | undefined {
  if (req.headers.authorization) return req.headers.authorization;
  const offered = String(req.headers['sec-websocket-protocol'] ?? '')
    .split(',')
    .map((p) => p.trim());
  const b64 = offered.find((p) => p.startsWith(BEARER_PROTOCOL_PREFIX))?.slice(BEARER_PROTOCOL_PREFIX.length);
  return b64 ? `Bearer ${Buffer.from(b64, 'base64url').toString('utf8')}` : undefined;
}

/**
 * Opens the websocket to the agent, paused (resume it once its frames have somewhere to go).
 * Resolves undefined when the client hung up meanwhile; rejects with the agent's refusal
 * (404, 409, ...) as an ApiError.
 */
function dialAgent(target: AgentTarget, nodeName: string, path: string, client: Duplex): Promise<WebSocket | undefined> {
  const host = target.host.includes(':') ? `[${target.host}]` : target.host;
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      client.off('close', onClientClose);
      fn();
    };
    const ws = new WebSocket(`wss://${host}:${target.port}${path}`, {
      headers: { Authorization: `Bearer ${target.token}` },
      ...(target.tls as ClientRequestArgs), // ws's own typing of checkServerIdentity predates Node's; it is passed to tls.connect as is
      perMessageDeflate: false,
      handshakeTimeout: 15_000,
    });
    const onClientClose = () =>
      settle(() => {
        ws.terminate();
        resolve(undefined);
      });
    client.once('close', onClientClose);
    // Paused before anyone listens: QEMU's VNC greeting can come in the same read as the 101,
    // and would be emitted before the caller's continuation runs.
    ws.once('open', () =>
      settle(() => {
        ws.pause();
        resolve(ws);
      }),
    );
    ws.on('unexpected-response', (req, res) => {
      readAll(res).then(
        (text) => {
          settle(() => reject(agentRefusal('stream', res.statusCode ?? 502, text, nodeName)));
          req.destroy();
        },
        (e: Error) => settle(() => reject(e)),
      );
    });
    ws.on('error', (e) =>
      settle(() => reject(e instanceof ApiError ? e : new ApiError(502, 'InternalError', `cannot reach the agent of node ${nodeName}: ${e.message}`))),
    );
  });
}

/** Copies frames between the client's websocket and the agent's, with backpressure, close codes and keep-alive pings. */
function relay(client: WebSocket, agent: WebSocket, done: () => void): void {
  const pipe = (from: WebSocket, to: WebSocket) => {
    from.on('message', (data: RawData) => {
      if (to.readyState !== WebSocket.OPEN) return;
      to.send(data, { binary: true }, () => {
        if (from.isPaused && to.bufferedAmount < HIGH_WATER / 2) from.resume();
      });
      if (to.bufferedAmount > HIGH_WATER) from.pause();
    });
    from.on('error', () => {}); // 'close' follows
    from.on('close', (code: number, reason: Buffer) => {
      clearInterval(ping);
      done();
      if (to.readyState === WebSocket.OPEN || to.readyState === WebSocket.CONNECTING) {
        // 1005/1006 cannot be sent: say "went away" or "broke" instead.
        const sendable = code === 1005 ? 1000 : code === 1006 ? 1011 : code;
        const why = reason.toString() || (code === 1006 ? (from === agent ? 'the connection to the node agent broke' : 'the client connection broke') : '');
        to.close(sendable, why);
      }
    });
  };
  pipe(client, agent);
  pipe(agent, client);
  const ping = setInterval(() => {
    for (const ws of [client, agent]) if (ws.readyState === WebSocket.OPEN) ws.ping();
  }, PING_MS);
  ping.unref();
}

function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => {
      if (chunks.length < 64) chunks.push(c);
    });
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
  });
}
