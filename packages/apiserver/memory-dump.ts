/**
 * KubeVirt's VM subresources `memorydump` (PUT VirtualMachineMemoryDumpRequest `{claimName}`)
 * and `removememorydump`. Vessel keeps it simple: the claim is not hotplugged into the guest's
 * pod as KubeVirt does; the agent of the VMI's node has QEMU write the dump (ELF, QMP
 * dump-guest-memory) as a file into the claim's dump directory beside its volume, and records
 * `status.memoryDumpRequest` (InProgress → Completed or Failed, fileName, timestamps) on the
 * VM. The claim must hold the guest's memory plus an overhead (as virt-api: 422 otherwise),
 * the VMI must run, and one dump at a time (409).
 */
import { findByResource, isObject, tryParseQuantity } from '@vessel/api';
import { authorize, type User } from './auth.ts';
import { agentRefusal, callAgent } from './agents.ts';
import { ApiError, invalid, undefinedIfNotFound } from './errors.ts';
import type { Resources } from './resources.ts';

const VM = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const VMI = findByResource('kubevirt.io', 'v1', 'virtualmachineinstances')!;
const PVC = findByResource('', 'v1', 'persistentvolumeclaims')!;
export const MEMORY_DUMP_ACTIONS = ':dump(memorydump|removememorydump)';
/** What a dump holds beyond the guest's RAM (ELF headers, device memory), as KubeVirt's estimate. */
export const MEMORY_DUMP_OVERHEAD = 100 * 2 ** 20;

type Obj = Record<string, unknown>;
const conflict = (message: string) => new ApiError(409, 'Conflict', message);

/** The bytes a claim must hold for a dump of a guest with `spec` (VMI spec): memory + overhead. */
export function memoryDumpSize(spec: Obj): number {
  const domain = (spec.domain ?? {}) as { memory?: { guest?: string }; resources?: { requests?: { memory?: string }; limits?: { memory?: string } } };
  const mem = tryParseQuantity(domain.memory?.guest ?? domain.resources?.requests?.memory ?? domain.resources?.limits?.memory ?? '0') ?? 0;
  return mem + MEMORY_DUMP_OVERHEAD;
}

/** KubeVirt's dump file name: `<vm>-<claim>-<yyyymmdd-hhmmss>.memory.dump`. */
export function memoryDumpFileName(vm: string, claim: string, at: Date): string {
  const stamp = at.toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  return `${vm}-${claim}-${stamp}.memory.dump`;
}

/** memorydump / removememorydump on a VM; resolves with the HTTP code (202). `readBody` reads the request's JSON. */
export async function memoryDumpAction(
  resources: Resources,
  user: User,
  namespace: string,
  name: string,
  action: string,
  readBody: () => Promise<unknown>,
): Promise<number> {
  authorize(user, { verb: 'update', group: 'subresources.kubevirt.io', resource: 'virtualmachines', subresource: action, namespace, name });
  const vm = await resources.get(VM, namespace, name);
  const current = (vm.status as { memoryDumpRequest?: { phase?: string; claimName?: string } } | undefined)?.memoryDumpRequest;
  if (action === 'removememorydump') {
    if (!current) throw conflict(`VM ${name} has no memory dump to remove`);
    if (current.phase === 'InProgress') throw conflict(`the memory dump of VM ${name} is in progress: wait for it to end`);
    await resources.patch(VM, namespace, name, 'merge', JSON.stringify({ status: { memoryDumpRequest: null } }), 'status');
    return 202;
  }
  const body = await readBody();
  const claimName = isObject(body) ? body.claimName : undefined;
  if (typeof claimName !== 'string' || claimName === '')
    throw invalid('VirtualMachineMemoryDumpRequest', 'kubevirt.io', name, [{ field: 'claimName', message: 'Required value', reason: 'FieldValueRequired' }]);
  if (current?.phase === 'InProgress') throw conflict(`a memory dump of VM ${name} is already in progress`);
  const vmi = await resources.get(VMI, namespace, name).catch(undefinedIfNotFound);
  const vs = (vmi?.status ?? {}) as { phase?: string; nodeName?: string };
  if (!vmi || vs.phase !== 'Running' || !vs.nodeName) throw conflict(`VM ${name} is not running: a memory dump needs a running VMI`);
  const claim = await resources.get(PVC, namespace, claimName).catch(undefinedIfNotFound);
  if (!claim)
    throw invalid('VirtualMachineMemoryDumpRequest', 'kubevirt.io', name, [
      { field: 'claimName', message: `PersistentVolumeClaim ${claimName} not found`, reason: 'FieldValueNotFound' },
    ]);
  const requested = (claim.spec as { resources?: { requests?: { storage?: string } } } | undefined)?.resources?.requests?.storage;
  const size = tryParseQuantity(requested ?? '0') ?? 0;
  const need = memoryDumpSize((vmi.spec ?? {}) as Obj);
  if (size < need)
    throw invalid('VirtualMachineMemoryDumpRequest', 'kubevirt.io', name, [
      {
        field: 'claimName',
        message: `PersistentVolumeClaim ${claimName} holds ${requested ?? '0'}: a memory dump needs at least ${Math.ceil(need / 2 ** 20)}Mi (the guest's memory + ${MEMORY_DUMP_OVERHEAD / 2 ** 20}Mi)`,
        reason: 'FieldValueInvalid',
      },
    ]);
  if ((claim.status as { phase?: string } | undefined)?.phase !== 'Bound') throw conflict(`PersistentVolumeClaim ${claimName} is not Bound yet: try again`);
  const now = new Date();
  const fileName = memoryDumpFileName(name, claimName, now);
  await resources.patch(
    VM,
    namespace,
    name,
    'merge',
    JSON.stringify({ status: { memoryDumpRequest: { claimName, phase: 'InProgress', startTimestamp: now.toISOString().replace(/\.\d+Z$/, 'Z'), fileName } } }),
    'status',
  );
  const path = `/v1/vmi/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}/memorydump/${encodeURIComponent(claimName)}/${encodeURIComponent(fileName)}`;
  const r = await callAgent(resources, vs.nodeName, 'PUT', path).catch((e: unknown) => ({ code: 500, body: JSON.stringify({ message: String(e) }) }));
  if (r.code >= 400) {
    const e = agentRefusal('action', r.code, r.body, vs.nodeName);
    await resources
      .patch(VM, namespace, name, 'merge', JSON.stringify({ status: { memoryDumpRequest: { phase: 'Failed', message: e.message } } }), 'status')
      .catch(() => undefined);
    throw e;
  }
  return 202;
}
