/**
 * Test-only helpers for controller unit tests over the in-memory client (real Resources over
 * SQLite :memory:, see packages/apiserver/testing/in-memory-client.ts): objects to start from,
 * waiting for a state, and the node agent's writes for a VMI start, made as the agent makes
 * them (packages/agent/vms/runtime.ts: finalizer patch, Running status, Started event).
 */
import { InMemoryClient } from '@vessel/apiserver/testing';
import type { KubeObject } from '@vessel/runtime';
import type { KubeObject as ApiObject, ResourceRef, Watch, WatchEvent, WatchOptions } from '@vessel/client';
import { setCondition, updateStatus } from '@vessel/runtime';
import { EventRecorder } from '@vessel/runtime';
import { refs } from '@vessel/api';
import { isNotFound } from '@vessel/client';

const { NODES, VMIS, VMS } = refs;

export { InMemoryClient };

/**
 * Delivers the watch events of the named resources (plural → delay in ms) late, so a controller
 * reconciles from a cache older than the store, as a busy informer does.
 */
export class LaggingClient extends InMemoryClient {
  constructor(private readonly lag: Record<string, number>) {
    super();
  }

  override watchResource<T extends ApiObject = ApiObject>(res: ResourceRef, opts: WatchOptions, onEvent: (event: WatchEvent<T>) => void): Watch {
    const ms = this.lag[res.plural];
    if (ms === undefined) return super.watchResource<T>(res, opts, onEvent);
    return super.watchResource<T>(res, opts, (ev) => {
      setTimeout(() => onEvent(ev), ms);
    });
  }
}
type Obj = Record<string, unknown>;

/** Polls `check` until it returns a value (not undefined/false) or `ms` pass. */
export async function until<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, ms = 2000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Lets queued reconciles run (several event-loop turns), for "nothing happens" checks. */
export const settle = (ms = 30) => new Promise((r) => setTimeout(r, ms));

export function vmObject(name: string, spec: Obj = {}, ns = 'default'): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: ns },
    spec: {
      template: { spec: { domain: { cpu: { cores: 1 }, resources: { requests: { memory: '128Mi' } }, devices: {} } } },
      ...spec,
    },
  };
}

export function nodeObject(
  name: string,
  opts: { cpu?: string; memory?: string; labels?: Record<string, string>; taints?: Obj[]; ready?: boolean } = {},
): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name, labels: { 'kubernetes.io/hostname': name, ...opts.labels } },
    spec: opts.taints ? { taints: opts.taints } : {},
    status: {
      capacity: { cpu: opts.cpu ?? '4', memory: opts.memory ?? '8Gi', pods: '110' },
      allocatable: { cpu: opts.cpu ?? '4', memory: opts.memory ?? '8Gi', pods: '110' },
      conditions: [{ type: 'Ready', status: opts.ready === false ? 'False' : 'True', reason: 'KubeletReady', message: '' }],
    },
  };
}

/** Creates a Node and writes its status (a create drops status, as for any kind with a status subresource). */
export async function createNode(c: InMemoryClient, name: string, opts: Parameters<typeof nodeObject>[1] = {}): Promise<void> {
  const node = nodeObject(name, opts);
  await c.create(NODES, node);
  await updateStatus(c, NODES, undefined, name, (s) => {
    Object.assign(s, node.status);
  });
}

export const vmStatus = async (c: InMemoryClient, name: string, ns = 'default') => ((await c.get(VMS, name, { namespace: ns })).status ?? {}) as Obj;
/** The object, or undefined when it does not exist (any other failure fails the test). */
export const tryGet = async (c: InMemoryClient, res: typeof VMIS, name: string, ns = 'default') =>
  c.get(res, name, { namespace: ns }).catch((e: unknown) => {
    if (isNotFound(e)) return undefined;
    throw e;
  });
export { NODES };

/** The agent's part of a start on `node`: what runtime.ts writes for a Scheduled VMI that boots. */
export async function agentStarts(c: InMemoryClient, name: string, node: string, ns = 'default'): Promise<void> {
  const vmi = await c.get(VMIS, name, { namespace: ns });
  await c.patch(
    VMIS,
    name,
    { metadata: { resourceVersion: vmi.metadata?.resourceVersion, finalizers: [...(vmi.metadata?.finalizers ?? []), 'vessel.io/vmi-runtime'] } },
    { namespace: ns },
  );
  await agentSets(c, name, 'Running', ns, node);
  await new EventRecorder(c, 'vessel-agent', node).record(vmi as KubeObject, 'Normal', 'Started', `VirtualMachineInstance started on ${node} (TCG)`);
}

/** Sets a VMI's phase as the agent would (Ready with Running; a final phase ends it). */
export async function agentSets(
  c: InMemoryClient,
  name: string,
  phase: 'Running' | 'Succeeded' | 'Failed',
  ns = 'default',
  node = 'node-a',
  at = new Date(),
): Promise<void> {
  await updateStatus(c, VMIS, ns, name, (s) => {
    s.phase = phase;
    s.nodeName ??= node;
    const stamps = (s.phaseTransitionTimestamps as Obj[] | undefined) ?? [];
    s.phaseTransitionTimestamps = [...stamps, { phase, phaseTransitionTimestamp: at.toISOString() }];
    setCondition(
      s,
      phase === 'Running' ? { type: 'Ready', status: 'True', reason: '', message: '' } : { type: 'Ready', status: 'False', reason: 'Stopped', message: '' },
      false,
    );
  });
}
