/**
 * PriorityClass and preemption end to end (docs/scheduling.md): real server, controllers, one
 * node agent (this process) whose allocatable memory is made small for the test
 * (`systemReserved`: the host's memory less 500 MiB), QEMU (TCG) and kubectl.
 *
 * - `kubectl get priorityclass` lists the two system classes and KubeVirt's example classes
 *   `preemtible` (1000) and `non-preemtible` (999999999) with kubectl's columns; reserved
 *   names, too high values and a second global default are refused (422 naming the field);
 * - a low-priority VM Running fills the node (its VMI shows its priority and memory overhead);
 *   a high-priority VM preempts it: the high one Runs, the low one's VMI is stopped and its VM
 *   (runStrategy Always) waits Pending for room, with Preempting/Preempted events;
 * - a VM naming a PriorityClass that does not exist gets no VMI: FailedCreate, saying why.
 * The guests need not boot: QEMU started is Running, and a short grace period stops them.
 */
import assert from 'node:assert/strict';
import { totalmem } from 'node:os';
import { after, before, describe, it } from 'node:test';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, kubectlFor, KUBECTL_SKIP, rejects, startVessel, type Vessel } from './harness.ts';
import { tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const PC: ResourceRef = { group: 'scheduling.k8s.io', version: 'v1', plural: 'priorityclasses', namespaced: false };
const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };
const ns = 'default';
const Mi = 2 ** 20;
const ALLOCATABLE = 500 * Mi;

type Obj = Record<string, unknown>;

/** A tiny VM of 192Mi (about 326 MiB with its overhead: one fits in 500 MiB, two do not) in a PriorityClass. */
function vm(name: string, priorityClassName: string): Obj {
  const o = tinyVm(name, { namespace: ns, memory: '192Mi', terminationGracePeriodSeconds: 3 });
  (o.spec as { template: { spec: Obj } }).template.spec.priorityClassName = priorityClassName;
  return o;
}

const phase = (o: KubeObject | undefined) => String((o?.status as Obj | undefined)?.phase ?? '');

let v: Vessel;
const { ok } = kubectlFor(() => v);

describe('PriorityClass and preemption', { skip: KUBECTL_SKIP }, () => {
  before(async () => {
    v = await startVessel({ agent: { nodeName: 'node-p', systemReserved: { cpuMillis: 0, memoryBytes: totalmem() - ALLOCATABLE } } });
    await ensureTinyImage(v.client, () => undefined);
  });

  after(async () => {
    for (const name of ['low', 'high', 'nope']) await v.client.delete(VM, name, { namespace: ns }).catch(() => undefined);
    await eventually('all VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 120_000).catch(
      () => undefined,
    );
    for (const name of ['preemtible', 'non-preemtible']) await v.client.delete(PC, name).catch(() => undefined);
    await v.close();
  });

  it('serves PriorityClasses with kubectl columns, the system classes, and refuses bad ones naming the field', async () => {
    await ok(
      ['apply', '-f', '-'],
      [
        'apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: preemtible}\nvalue: 1000\npreemptionPolicy: PreemptLowerPriority\ndescription: may be preempted',
        'apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: non-preemtible}\nvalue: 999999999\ndescription: preempts others',
      ].join('\n---\n'),
    );
    const table = await ok(['get', 'priorityclass']);
    assert.match(table, /^NAME\s+VALUE\s+GLOBAL-DEFAULT\s+AGE/);
    assert.match(table, /\nsystem-cluster-critical\s+2000000000\s+false\s/);
    assert.match(table, /\nsystem-node-critical\s+2000001000\s+false\s/);
    assert.match(table, /\npreemtible\s+1000\s+false\s/);
    assert.match(table, /\nnon-preemtible\s+999999999\s+false\s/);
    const pc = (name: string, value: number, extra: Obj = {}) => ({
      apiVersion: 'scheduling.k8s.io/v1',
      kind: 'PriorityClass',
      metadata: { name },
      value,
      ...extra,
    });
    await rejects(v.client.create(PC, pc('system-mine', 5)), 422, /metadata\.name: Forbidden: priority class names with 'system-' prefix are reserved/);
    await rejects(v.client.create(PC, pc('too-high', 2_000_000_000)), 422, /value: Forbidden: maximum allowed value of a user defined priority is 1000000000/);
    await v.client.create(PC, pc('default-a', 1, { globalDefault: true }));
    try {
      await rejects(
        v.client.create(PC, pc('default-b', 2, { globalDefault: true })),
        422,
        /globalDefault: Forbidden: PriorityClass default-a is marked as default already/,
      );
    } finally {
      await v.client.delete(PC, 'default-a');
    }
  });

  it('the node publishes its allocatable memory less the reservation', async () => {
    const node = await v.client.get({ group: '', version: 'v1', plural: 'nodes', namespaced: false }, 'node-p');
    const st = node.status as { allocatable: { memory: string }; capacity: { memory: string } };
    assert.equal(st.allocatable.memory, `${Math.floor((totalmem() - (totalmem() - ALLOCATABLE)) / 1024)}Ki`);
    assert.equal(st.capacity.memory, `${Math.floor(totalmem() / 1024)}Ki`);
  });

  it('a VM naming no existing PriorityClass gets no VMI: FailedCreate says why', async () => {
    await v.client.create(
      VM,
      {
        apiVersion: 'kubevirt.io/v1',
        kind: 'VirtualMachine',
        metadata: { name: 'nope', namespace: ns },
        spec: {
          runStrategy: 'Always',
          template: { spec: { priorityClassName: 'missing', domain: { resources: { requests: { memory: '64Mi' } }, devices: {} } } },
        },
      },
      { namespace: ns },
    );
    const cond = await eventually(
      'FailedCreate on the VM',
      async () => {
        const got = await v.client.get(VM, 'nope', { namespace: ns });
        return ((got.status as Obj | undefined)?.conditions as { reason?: string; message?: string }[] | undefined)?.find((c) => c.reason === 'FailedCreate');
      },
      60_000,
    );
    assert.match(String(cond.message), /no PriorityClass with name missing was found/);
    await assert.rejects(v.client.get(VMI, 'nope', { namespace: ns }), /not found/i);
    await v.client.delete(VM, 'nope', { namespace: ns });
  });

  it('a high-priority VM preempts the low-priority one that fills the node', { timeout: 240_000 }, async () => {
    const t0 = Date.now();
    await v.client.create(VM, vm('low', 'preemtible'), { namespace: ns });
    const low = await eventually(
      'low Running',
      async () => {
        const vmi = await v.client.get(VMI, 'low', { namespace: ns }).catch(() => undefined);
        return phase(vmi) === 'Running' ? vmi : undefined;
      },
      180_000,
      300,
    );
    const a = low.metadata!.annotations ?? {};
    assert.equal(a['vessel.io/priority'], '1000');
    assert.equal(a['vessel.io/preemption-policy'], 'PreemptLowerPriority');
    // 192Mi guest, 1 vCPU, TCG: 30 + 72 + 192/512 + 8 + 8 + 16 MiB.
    assert.equal(a['vessel.io/memory-overhead'], String(134 * Mi + (192 * Mi) / 512));
    const lowUid = low.metadata!.uid;

    await v.client.create(VM, vm('high', 'non-preemtible'), { namespace: ns });
    const high = await eventually(
      'high Running',
      async () => {
        const vmi = await v.client.get(VMI, 'high', { namespace: ns }).catch(() => undefined);
        return phase(vmi) === 'Running' ? vmi : undefined;
      },
      180_000,
      300,
    );
    assert.equal(high.metadata!.annotations?.['vessel.io/priority'], '999999999');
    assert.equal(high.metadata!.annotations?.['vessel.io/nominated-node'], undefined, 'the nomination ends with the binding');
    // The low VM's first VMI is gone; its VM (runStrategy Always) made a new one that waits for room.
    const again = await eventually(
      'low pending again',
      async () => {
        const vmi = await v.client.get(VMI, 'low', { namespace: ns }).catch(() => undefined);
        if (process.env.VESSEL_TEST_LOG) console.error('low now', vmi?.metadata?.uid, phase(vmi), JSON.stringify(vmi?.status));
        return vmi && vmi.metadata!.uid !== lowUid && phase(vmi) === 'Pending' ? vmi : undefined;
      },
      60_000,
      1000,
    );
    const sched = ((again.status as Obj).conditions as { type: string; status: string; message: string }[]).find((c) => c.type === 'PodScheduled');
    assert.equal(sched?.status, 'False');
    assert.match(sched?.message ?? '', /Insufficient memory.*preemption: No preemption victims found/);

    const events = (await v.client.list(EVENTS, { namespace: ns })).items as unknown as {
      reason: string;
      message: string;
      involvedObject: { kind: string; name: string };
    }[];
    const of = (kind: string, name: string, reason: string) =>
      events.filter((e) => e.involvedObject.kind === kind && e.involvedObject.name === name && e.reason === reason);
    assert.equal(
      of('VirtualMachine', 'low', 'Preempted').length,
      1,
      JSON.stringify(events.map((e) => [e.involvedObject.kind, e.involvedObject.name, e.reason])),
    );
    assert.match(of('VirtualMachine', 'low', 'Preempted')[0].message, /Preempted by default\/high \(priority 999999999\) on node node-p: stopping it/);
    assert.equal(of('VirtualMachineInstance', 'high', 'Preempting').length, 1);
    assert.match(of('VirtualMachineInstance', 'high', 'Preempting')[0].message, /default\/low \(stopped\)/);
    console.log(`# low Running, then high Running after preempting it: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const table = await ok(['get', 'vmi']);
    assert.match(table, /\nhigh\s+\S+\s+Running\s/);
    assert.match(table, /\nlow\s+\S+\s+Pending\s/);
  });
});
