/**
 * How the API server reaches a node's agent: the address and port the agent published on its
 * Node, the certificate fingerprint to pin, and the token agents accept from the server
 * (kube-system/vessel-agent-auth), for uploads, consoles, VNC, the serial log and VM actions;
 * and how the agent's refusals become Statuses (agentRefusal).
 */
import { STATUS_CODES } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { PeerCertificate } from 'node:tls';
import { findByResource, storage } from '@vessel/api';
import { checkPinned } from '@vessel/tls';
import { ApiError, reasonFor } from './errors.ts';
import type { Resources } from './resources.ts';

const NODE = findByResource('', 'v1', 'nodes')!;
const SECRET = findByResource('', 'v1', 'secrets')!;

export interface AgentTarget {
  host: string;
  port: number;
  token: string;
  /**
   * TLS options for https.request / ws: the agent's own self-signed certificate is the only CA,
   * and the fingerprint must match (the name in it is the node's, not the address dialled).
   */
  tls: { ca: string; rejectUnauthorized: true; checkServerIdentity: (host: string, cert: PeerCertificate) => Error | undefined; agent: false };
}

export async function agentTarget(resources: Resources, nodeName: string): Promise<AgentTarget> {
  const node = await resources.get(NODE, undefined, nodeName);
  const status = (node.status ?? {}) as { addresses?: { type: string; address: string }[]; daemonEndpoints?: { kubeletEndpoint?: { Port?: number } } };
  const host = status.addresses?.find((a) => a.type === 'InternalIP')?.address;
  const port = status.daemonEndpoints?.kubeletEndpoint?.Port;
  const fingerprint256 = node.metadata.annotations?.[storage.NODE_CERT_SHA256];
  const ca = node.metadata.annotations?.[storage.NODE_CERT];
  if (!host || !port || !fingerprint256 || !ca)
    throw new ApiError(503, 'ServiceUnavailable', `node ${nodeName} has not published its agent endpoint yet`, { retryAfterSeconds: 2 });
  const secret = await resources.get(SECRET, 'kube-system', storage.AGENT_AUTH_SECRET);
  const token = Buffer.from(String((secret.data as Record<string, string>).token), 'base64').toString('utf8');
  const checkServerIdentity = checkPinned(fingerprint256, () => new Error(`node ${nodeName}'s agent presented a certificate that does not match its Node`));
  return { host, port, token, tls: { ca, rejectUnauthorized: true, checkServerIdentity, agent: false } };
}

/** One request to a node's agent (certificate pinned, agent token sent); resolves with its answer. */
export async function callAgent(resources: Resources, nodeName: string, method: string, path: string): Promise<{ code: number; body: string }> {
  const target = await agentTarget(resources, nodeName);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      { host: target.host, port: target.port, method, path, headers: { Authorization: `Bearer ${target.token}` }, ...target.tls },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
        });
        res.on('end', () => resolve({ code: res.statusCode ?? 502, body }));
      },
    );
    req.setTimeout(30_000, () => req.destroy(new Error(`node ${nodeName}'s agent did not answer within 30 s`)));
    req.on('error', (e) => reject(new ApiError(502, 'InternalError', `cannot reach the agent of node ${nodeName}: ${e.message}`)));
    req.end();
  });
}

/** What the server asked an agent for: each passes the agent's codes through differently. */
export type AgentCall = 'upload' | 'stream' | 'action';

/**
 * An agent's refusal (its endpoint answers `{message, offset?, reason?}` JSON, or text) as an
 * ApiError: the one place agent answers become Statuses. Uploads keep the agent's code and
 * name its reason; console, VNC and serial log keep the codes that are about the VM and are a
 * 502 otherwise; VM actions are a 409 (the VM's state forbids it) or a 500.
 */
export function agentRefusal(call: AgentCall, code: number, body: string, nodeName: string): ApiError {
  let message = body.trim();
  let reason: string | undefined;
  try {
    const parsed = JSON.parse(body) as { message?: unknown; reason?: unknown };
    if (typeof parsed.message === 'string') {
      message = parsed.message;
      if (typeof parsed.reason === 'string') reason = parsed.reason;
    }
  } catch {
    /* not JSON: the text is the message */
  }
  switch (call) {
    case 'upload':
      return new ApiError(
        code,
        reasonFor(code),
        `upload refused by the agent of node ${nodeName}: ${(reason ? `${message} (${reason})` : message) || `HTTP ${code}`}`,
      );
    case 'stream':
      // 502/504: port-forward's guest refused or stayed silent, which the agent's message says.
      if ([400, 404, 409, 502, 503, 504].includes(code))
        return new ApiError(code, reasonFor(code), message || `the agent of node ${nodeName} answered ${code}`);
      return new ApiError(502, 'InternalError', `the agent of node ${nodeName} answered ${code}: ${message || STATUS_CODES[code] || 'error'}`);
    case 'action':
      return code === 409 ? new ApiError(409, 'Conflict', message) : new ApiError(500, 'InternalError', message);
  }
}
