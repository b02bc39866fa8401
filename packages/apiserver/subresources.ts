/**
 * KubeVirt's action subresources (`/apis/subresources.kubevirt.io/v1/...`), as virt-api
 * answers them: VM start, stop and restart change the run strategy or leave a state change
 * request for the VM controller; VMI pause, unpause, softreboot and reset go to the agent of
 * the VMI's node, which acts over QMP. 202 when accepted, 409 when the VM's state or run
 * strategy forbids the action, with a message that says which.
 */
import { findByResource } from '@vessel/api';
import { authorize, type User } from './auth.ts';
import { callAgent } from './agents.ts';
import { ApiError } from './errors.ts';
import type { Resources } from './resources.ts';

const VM = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const VMI = findByResource('kubevirt.io', 'v1', 'virtualmachineinstances')!;
export const SUBRESOURCE_PATH = /^\/apis\/subresources\.kubevirt\.io\/(?:v1|v1alpha3)\/namespaces\/([^/]+)\/(virtualmachines|virtualmachineinstances)\/([^/]+)\/(start|stop|restart|pause|unpause|softreboot|reset)$/;

type Obj = Record<string, unknown>;
const conflict = (message: string) => new ApiError(409, 'Conflict', message);
const FINAL = new Set(['Succeeded', 'Failed']);

/** Carries out one action; resolves with the HTTP code to answer. */
export async function runAction(resources: Resources, user: User, namespace: string, resource: string, name: string, action: string): Promise<number> {
  authorize(user, { verb: 'update', group: 'subresources.kubevirt.io', resource, subresource: action, namespace, name });
  if (resource === 'virtualmachines') await vmAction(resources, namespace, name, action);
  else await vmiAction(resources, namespace, name, action);
  return 202;
}

async function vmAction(resources: Resources, ns: string, name: string, action: string): Promise<void> {
  const vm = await resources.get(VM, ns, name);
  const spec = (vm.spec ?? {}) as { runStrategy?: string; running?: boolean };
  const strategy = spec.runStrategy ?? (spec.running ? 'Always' : 'Halted');
  const vmi = await resources.get(VMI, ns, name).catch(() => undefined);
  const alive = !!vmi && !FINAL.has(String((vmi.status as Obj | undefined)?.phase ?? '')) && !vmi.metadata.deletionTimestamp;
  const setStrategy = (next: 'Always' | 'Halted') => resources.patch(VM, ns, name, 'merge', JSON.stringify(
    spec.runStrategy !== undefined ? { spec: { runStrategy: next } } : { spec: { running: next === 'Always' } }), undefined);
  const request = (reqs: Obj[]) => resources.patch(VM, ns, name, 'merge', JSON.stringify({ status: { stateChangeRequests: reqs } }), 'status');
  switch (action) {
    case 'start':
      if (alive) throw conflict(`VM ${name} is already running`);
      if (strategy === 'Halted') { await setStrategy('Always'); return; }
      if (strategy === 'Always' || strategy === 'Once') throw conflict(`runStrategy ${strategy} does not support manual start requests`);
      await request([{ action: 'Start' }]);
      return;
    case 'stop':
      if (strategy === 'Halted' && !alive) throw conflict(`VM ${name} is not running`);
      if (strategy === 'Always' || strategy === 'RerunOnFailure') { await setStrategy('Halted'); return; }
      if (!alive) throw conflict(`VM ${name} is not running`);
      await request([{ action: 'Stop', uid: vmi!.metadata.uid }]);
      return;
    case 'restart':
      if (strategy === 'Halted') throw conflict(`runStrategy Halted does not support manual restart requests`);
      if (!alive) throw conflict(`VM ${name} is not running`);
      await request(strategy === 'Always' || strategy === 'RerunOnFailure' ? [{ action: 'Stop', uid: vmi!.metadata.uid }] : [{ action: 'Stop', uid: vmi!.metadata.uid }, { action: 'Start' }]);
      return;
    default:
      throw new ApiError(404, 'NotFound', `virtualmachines have no action ${action}`);
  }
}

async function vmiAction(resources: Resources, ns: string, name: string, action: string): Promise<void> {
  const vmi = await resources.get(VMI, ns, name);
  const status = (vmi.status ?? {}) as { phase?: string; nodeName?: string };
  if (status.phase !== 'Running' || !status.nodeName) throw conflict(`VMI ${name} is not running`);
  const r = await callAgent(resources, status.nodeName, 'PUT', `/v1/vmi/${encodeURIComponent(ns)}/${encodeURIComponent(name)}/${action}`);
  if (r.code >= 400) {
    const message = (() => { try { return String((JSON.parse(r.body) as { message?: string }).message); } catch { return r.body; } })();
    throw new ApiError(r.code === 409 ? 409 : 500, r.code === 409 ? 'Conflict' : 'InternalError', message);
  }
}
