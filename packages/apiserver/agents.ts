/**
 * How the API server reaches a node's agent: the address and port the agent published on its
 * Node, the certificate fingerprint to pin, and the token agents accept from the server
 * (kube-system/vessel-agent-auth). Uploads use it today; consoles and VNC next.
 */
import { findByResource, storage } from '@vessel/api';
import { ApiError } from './errors.ts';
import type { Resources } from './resources.ts';

const NODE = findByResource('', 'v1', 'nodes')!;
const SECRET = findByResource('', 'v1', 'secrets')!;

export interface AgentTarget { host: string; port: number; fingerprint256: string; token: string }

export async function agentTarget(resources: Resources, nodeName: string): Promise<AgentTarget> {
  const node = await resources.get(NODE, undefined, nodeName);
  const status = (node.status ?? {}) as { addresses?: { type: string; address: string }[]; daemonEndpoints?: { kubeletEndpoint?: { Port?: number } } };
  const host = status.addresses?.find((a) => a.type === 'InternalIP')?.address;
  const port = status.daemonEndpoints?.kubeletEndpoint?.Port;
  const fingerprint256 = (node.metadata.annotations as Record<string, string> | undefined)?.[storage.NODE_CERT_SHA256];
  if (!host || !port || !fingerprint256) throw new ApiError(503, 'ServiceUnavailable', `node ${nodeName} has not published its agent endpoint yet`, { retryAfterSeconds: 2 });
  const secret = await resources.get(SECRET, 'kube-system', storage.AGENT_AUTH_SECRET);
  const token = Buffer.from(String((secret.data as Record<string, string>).token), 'base64').toString('utf8');
  return { host, port, fingerprint256, token };
}

