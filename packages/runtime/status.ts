/**
 * Status writes that survive concurrent writers: read the newest object, let `mutate` change
 * its status (or decide there is nothing to do), write with the resourceVersion read, and
 * start again on a conflict. The server and the agents both write DataVolume and claim status.
 */
import { isStatusError, type Client, type ResourceRef } from '@vessel/client';
import type { KubeObject } from './informer.ts';

export type Status = Record<string, unknown>;

/**
 * Applies `mutate` to the current status of `name`; `mutate` returns false to leave it as it
 * is. Resolves to the object as written (or as found, when nothing changed); undefined when
 * the object is gone.
 */
export async function updateStatus(
  client: Client,
  res: ResourceRef & { statusSubresource?: boolean },
  namespace: string | undefined,
  name: string,
  mutate: (status: Status, obj: KubeObject) => boolean | void,
): Promise<KubeObject | undefined> {
  for (let attempt = 0; ; attempt++) {
    let obj: KubeObject;
    try {
      obj = (await client.get(res, name, { namespace })) as KubeObject;
    } catch (e) {
      if (isStatusError(e, 'NotFound')) return undefined;
      throw e;
    }
    const status: Status = structuredClone((obj.status as Status | undefined) ?? {});
    if (mutate(status, obj) === false) return obj;
    if (JSON.stringify(status) === JSON.stringify(obj.status ?? {})) return obj;
    try {
      return (await client.update(res, { ...obj, status }, { namespace, subresource: res.statusSubresource === false ? undefined : 'status' })) as KubeObject;
    } catch (e) {
      if (isStatusError(e, 'NotFound')) return undefined;
      if (!isStatusError(e, 'Conflict') || attempt >= 20) throw e;
    }
  }
}

/**
 * Sets (or replaces) the condition of `type` in a status, keeping lastTransitionTime when status
 * did not change. `heartbeat`: CDI's and core conditions carry lastHeartbeatTime; KubeVirt's
 * (VM, VMI) do not.
 */
export function setCondition(
  status: Status,
  cond: { type: string; status: 'True' | 'False' | 'Unknown'; reason?: string; message?: string },
  heartbeat = true,
): void {
  const list = ((status.conditions as Record<string, unknown>[] | undefined) ?? []).slice();
  const i = list.findIndex((c) => c.type === cond.type);
  const now = new Date().toISOString();
  const prev = i >= 0 ? list[i] : undefined;
  const next = {
    type: cond.type,
    status: cond.status,
    reason: cond.reason ?? '',
    message: cond.message ?? '',
    lastTransitionTime: prev && prev.status === cond.status ? prev.lastTransitionTime : now,
    ...(heartbeat
      ? {
          lastHeartbeatTime:
            prev && prev.status === cond.status && prev.reason === (cond.reason ?? '') && prev.message === (cond.message ?? '')
              ? (prev.lastHeartbeatTime ?? now)
              : now,
        }
      : {}),
  };
  if (i >= 0) list[i] = next;
  else list.push(next);
  status.conditions = list;
}

/** The condition of `type`, if set. */
export function getCondition(obj: { status?: unknown } | KubeObject, type: string): { status: string; reason?: string; message?: string } | undefined {
  const list = ((obj.status as Status | undefined)?.conditions as { type: string; status: string; reason?: string; message?: string }[] | undefined) ?? [];
  return list.find((c) => c.type === type);
}
