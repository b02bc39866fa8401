/**
 * KubeVirt's read-only subresources (`/apis/subresources.kubevirt.io/v1/...`): the VMI's
 * `guestosinfo`, `userlist` and `filesystemlist`, which the agent of the VMI's node reads from
 * the guest agent (agent/qga/guest-info.ts), and the group's `version` and `healthz`. As
 * virt-api: 409 when the VMI is not running or has no guest agent connected (its
 * AgentConnected condition), and reading them needs read access to the VMI's subresource
 * (viewers may, as in KubeVirt's view role).
 */
import { readFileSync } from 'node:fs';
import { findByResource } from '@vessel/api';
import { authorize, type User } from './auth.ts';
import { agentRefusal, callAgent } from './agents.ts';
import { serverVersion } from './discovery.ts';
import { ApiError } from './errors.ts';
import type { Resources } from './resources.ts';

const VMI = findByResource('kubevirt.io', 'v1', 'virtualmachineinstances')!;
export const GUEST_INFO = ':info(guestosinfo|userlist|filesystemlist)';

const conflict = (name: string, why: string) =>
  new ApiError(409, 'Conflict', `Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io "${name}": ${why}`, {
    name,
    group: VMI.group,
    kind: 'virtualmachineinstances',
  });

/** The guest agent's answer for one VMI, in KubeVirt's shape. */
export async function guestInfo(resources: Resources, user: User, namespace: string, name: string, info: string): Promise<unknown> {
  authorize(user, { verb: 'get', group: 'subresources.kubevirt.io', resource: 'virtualmachineinstances', subresource: info, namespace, name });
  const vmi = await resources.get(VMI, namespace, name);
  const status = (vmi.status ?? {}) as { phase?: string; nodeName?: string; conditions?: { type?: string; status?: string }[] };
  if (status.phase !== 'Running' || !status.nodeName) throw conflict(name, 'VMI is not running');
  if (!status.conditions?.some((c) => c.type === 'AgentConnected' && c.status === 'True')) throw conflict(name, 'VMI does not have guest agent connected');
  const r = await callAgent(resources, status.nodeName, 'GET', `/v1/vmi/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}/${info}`);
  if (r.code >= 400) {
    const e = agentRefusal('action', r.code, r.body, status.nodeName);
    throw e.code === 409 ? conflict(name, e.message) : e;
  }
  return JSON.parse(r.body) as unknown;
}

let version: string | undefined;

/** GET /apis/subresources.kubevirt.io/v1/version: KubeVirt's version.Info, with Vessel's version. */
export function kubevirtVersion(): Record<string, string> {
  if (version === undefined) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
      version = pkg.version ?? '0.0.0-dev';
    } catch {
      version = '0.0.0-dev';
    }
  }
  const { gitCommit, gitTreeState, buildDate, goVersion, compiler, platform } = serverVersion;
  return { gitVersion: `v${version}+vessel`, gitCommit, gitTreeState, buildDate, goVersion, compiler, platform };
}
