/**
 * VirtualMachine controller unit tests over the in-memory client (real Resources and SQLite
 * :memory:, no HTTP, no agent): run strategies, crash-loop backoff, RestartRequired, status,
 * dataVolumeTemplates, and the API writes one VM start costs.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { getCondition } from '@vessel/runtime';
import { refs } from '@vessel/api';
import { Scheduler } from './scheduler.ts';
import { VirtualMachineController } from './vm.ts';
import { agentSets, agentStarts, createNode, InMemoryClient, settle, tryGet, until, vmObject, vmStatus } from './testing/harness.ts';
import { updateStatus } from '@vessel/runtime';
import type { KubeObject, NamespaceOption, ResourceRef } from '@vessel/client';

const { DATAVOLUMES, VMIS, VMS } = refs;

const started = performance.now();
after(() => {
  console.log(`# vm.test.ts: ${(performance.now() - started).toFixed(0)} ms`);
});

async function setup(opts: { scheduler?: boolean; client?: InMemoryClient } = {}) {
  const c = opts.client ?? new InMemoryClient();
  await c.namespaces('default');
  const vmc = new VirtualMachineController(c);
  const sched = opts.scheduler ? new Scheduler(c) : undefined;
  await vmc.start();
  await sched?.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      await vmc.stop();
      await sched?.stop();
      c.close();
    },
  };
}

const printable = (c: InMemoryClient, name: string, want: string) => until(`${name} ${want}`, async () => (await vmStatus(c, name)).printableStatus === want);
const vmiUid = async (c: InMemoryClient, name: string) => (await tryGet(c, VMIS, name))?.metadata?.uid;

test('runStrategy Always: makes a VMI, and a new one after the guest stops', async () => {
  await using h = await setup();
  await h.c.create(VMS, vmObject('a', { runStrategy: 'Always' }));
  const first = await until('VMI', () => vmiUid(h.c, 'a'));
  await printable(h.c, 'a', 'Starting');
  await agentSets(h.c, 'a', 'Running');
  await printable(h.c, 'a', 'Running');
  assert.equal((await vmStatus(h.c, 'a')).ready, true);
  await agentSets(h.c, 'a', 'Succeeded');
  const second = await until('a new VMI', async () => {
    const u = await vmiUid(h.c, 'a');
    return u && u !== first ? u : undefined;
  });
  assert.notEqual(second, first);
});

test('running: false is Halted (no VMI); running: true is Always', async () => {
  await using h = await setup();
  await h.c.create(VMS, vmObject('off', { running: false }));
  await printable(h.c, 'off', 'Stopped');
  assert.equal((await vmStatus(h.c, 'off')).runStrategy, 'Halted');
  assert.equal(await vmiUid(h.c, 'off'), undefined);
  await h.c.patch(VMS, 'off', { spec: { running: true } }, { namespace: 'default' });
  await until('VMI', () => vmiUid(h.c, 'off'));
  await until('runStrategy Always', async () => (await vmStatus(h.c, 'off')).runStrategy === 'Always');
});

test('runStrategy Halted: deletes a running VMI', async () => {
  await using h = await setup();
  await h.c.create(VMS, vmObject('h', { runStrategy: 'Always' }));
  await until('VMI', () => vmiUid(h.c, 'h'));
  await agentSets(h.c, 'h', 'Running');
  await h.c.patch(VMS, 'h', { spec: { runStrategy: 'Halted' } }, { namespace: 'default' });
  await until('VMI gone', async () => (await vmiUid(h.c, 'h')) === undefined);
  await printable(h.c, 'h', 'Stopped');
});

test('runStrategy RerunOnFailure: restarts after Failed, not after Succeeded', async () => {
  await using h = await setup();
  await h.c.create(VMS, vmObject('r', { runStrategy: 'RerunOnFailure' }));
  const first = await until('VMI', () => vmiUid(h.c, 'r'));
  await agentSets(h.c, 'r', 'Running');
  await agentSets(h.c, 'r', 'Failed');
  const second = await until('a new VMI', async () => {
    const u = await vmiUid(h.c, 'r');
    return u && u !== first ? u : undefined;
  });
  await agentSets(h.c, 'r', 'Running');
  await agentSets(h.c, 'r', 'Succeeded');
  await printable(h.c, 'r', 'Stopped');
  await settle();
  assert.equal(await vmiUid(h.c, 'r'), second, 'a VMI that succeeded is not replaced');
});

test('runStrategy Once: one VMI, never another', async () => {
  await using h = await setup();
  await h.c.create(VMS, vmObject('o', { runStrategy: 'Once' }));
  const first = await until('VMI', () => vmiUid(h.c, 'o'));
  await agentSets(h.c, 'o', 'Running');
  await agentSets(h.c, 'o', 'Failed');
  await printable(h.c, 'o', 'Stopped');
  await settle();
  assert.equal(await vmiUid(h.c, 'o'), first);
});

test('runStrategy Manual: nothing until a Start request; a Stop request ends the VMI', async () => {
  await using h = await setup();
  await h.c.create(VMS, vmObject('m', { runStrategy: 'Manual' }));
  await printable(h.c, 'm', 'Stopped');
  assert.equal(await vmiUid(h.c, 'm'), undefined);
  // What the start subresource writes (apiserver/subresources.ts).
  await h.c.patch(VMS, 'm', { status: { stateChangeRequests: [{ action: 'Start' }] } }, { namespace: 'default', subresource: 'status' });
  await until('VMI', () => vmiUid(h.c, 'm'));
  await until('request consumed', async () => (await vmStatus(h.c, 'm')).stateChangeRequests === undefined);
  await agentSets(h.c, 'm', 'Running');
  await h.c.patch(VMS, 'm', { status: { stateChangeRequests: [{ action: 'Stop' }] } }, { namespace: 'default', subresource: 'status' });
  await until('VMI gone', async () => (await vmiUid(h.c, 'm')) === undefined);
  await printable(h.c, 'm', 'Stopped');
  assert.equal((await vmStatus(h.c, 'm')).stateChangeRequests, undefined);
});

test('runStrategy Manual: a Start request left behind while the VMI runs is dropped; the guest stopping does not restart it', async () => {
  await using h = await setup();
  await h.c.create(VMS, vmObject('ml', { runStrategy: 'Manual' }));
  await h.c.patch(VMS, 'ml', { status: { stateChangeRequests: [{ action: 'Start' }] } }, { namespace: 'default', subresource: 'status' });
  const first = await until('VMI', () => vmiUid(h.c, 'ml'));
  await agentSets(h.c, 'ml', 'Running');
  await printable(h.c, 'ml', 'Running');
  // As if the write that consumed it had lost a conflict.
  await h.c.patch(VMS, 'ml', { status: { stateChangeRequests: [{ action: 'Start' }] } }, { namespace: 'default', subresource: 'status' });
  await until('request dropped', async () => (await vmStatus(h.c, 'ml')).stateChangeRequests === undefined);
  await agentSets(h.c, 'ml', 'Succeeded');
  await printable(h.c, 'ml', 'Stopped');
  await settle();
  assert.equal(await vmiUid(h.c, 'ml'), first, 'no new VMI');
});

test('crash loop: the second failure in a row backs off (CrashLoopBackOff, startFailure)', async () => {
  await using h = await setup();
  await h.c.create(VMS, vmObject('cl', { runStrategy: 'Always' }));
  const first = await until('VMI', () => vmiUid(h.c, 'cl'));
  await agentSets(h.c, 'cl', 'Failed');
  // The first retry is immediate.
  const second = await until('a new VMI', async () => {
    const u = await vmiUid(h.c, 'cl');
    return u && u !== first ? u : undefined;
  });
  await agentSets(h.c, 'cl', 'Failed');
  await printable(h.c, 'cl', 'CrashLoopBackOff');
  const sf = (await vmStatus(h.c, 'cl')).startFailure as { consecutiveFailCount: number; lastFailedVMIUID: string; retryAfterTimestamp: string };
  assert.equal(sf.consecutiveFailCount, 2);
  assert.equal(sf.lastFailedVMIUID, second);
  const wait = Date.parse(sf.retryAfterTimestamp) - Date.now();
  assert.ok(wait > 8000 && wait <= 10_000, `retry in ~10 s, got ${wait} ms`);
  await settle();
  assert.equal(await vmiUid(h.c, 'cl'), second, 'no restart during the backoff');
});

/**
 * The real API server, where another writer's change to the VM lands between the controller's
 * read and the first status write that carries a startFailure, as the start subresource or a
 * user's label edit might: that write gets a 409.
 */
class RacingClient extends InMemoryClient {
  raced = 0;
  override async update<T extends KubeObject = KubeObject>(
    res: ResourceRef,
    obj: KubeObject,
    opts: NamespaceOption & { subresource?: string } = {},
  ): Promise<T> {
    if (!this.raced && res.plural === 'virtualmachines' && opts.subresource === 'status' && (obj.status as Record<string, unknown> | undefined)?.startFailure) {
      this.raced++;
      await this.patch(VMS, String(obj.metadata?.name), { metadata: { labels: { edited: 'meanwhile' } } }, { namespace: obj.metadata?.namespace });
    }
    return super.update<T>(res, obj, opts);
  }
}

test('crash loop: the failure count survives a conflicting write to the VM (409)', async () => {
  const c = new RacingClient();
  await using h = await setup({ client: c });
  await h.c.create(VMS, vmObject('race', { runStrategy: 'Always' }));
  const first = await until('VMI', () => vmiUid(h.c, 'race'));
  await agentSets(h.c, 'race', 'Failed');
  const second = await until('a new VMI', async () => {
    const u = await vmiUid(h.c, 'race');
    return u && u !== first ? u : undefined;
  });
  assert.equal(c.raced, 1, 'the first status write with a startFailure met a conflicting write');
  await agentSets(h.c, 'race', 'Failed');
  // Had the first count been lost, this would be an immediate restart with a count of 1.
  await printable(h.c, 'race', 'CrashLoopBackOff');
  const sf = (await vmStatus(h.c, 'race')).startFailure as { consecutiveFailCount: number; lastFailedVMIUID: string };
  assert.equal(sf.consecutiveFailCount, 2);
  assert.equal(sf.lastFailedVMIUID, second);
  assert.equal((await h.c.get(VMS, 'race', { namespace: 'default' })).metadata?.labels?.edited, 'meanwhile', 'the other write is kept');
});

test('one VM status write per reconcile: a failure that starts a backoff is one write (startFailure and CrashLoopBackOff)', async () => {
  await using h = await setup();
  await h.c.create(VMS, vmObject('one', { runStrategy: 'Always' }));
  const first = await until('VMI', () => vmiUid(h.c, 'one'));
  await agentSets(h.c, 'one', 'Failed');
  await until('a new VMI', async () => {
    const u = await vmiUid(h.c, 'one');
    return u && u !== first ? u : undefined;
  });
  await printable(h.c, 'one', 'Starting');
  await settle();
  const before = h.c.count((w) => w.resource === 'virtualmachines/status');
  await agentSets(h.c, 'one', 'Failed');
  await printable(h.c, 'one', 'CrashLoopBackOff');
  await settle();
  assert.equal((await vmStatus(h.c, 'one')).startFailure !== undefined, true);
  assert.equal(h.c.count((w) => w.resource === 'virtualmachines/status') - before, 1);
});

test('RestartRequired when the template changes under a running VMI; cleared on the next VMI', async () => {
  await using h = await setup();
  await h.c.create(VMS, vmObject('rr', { runStrategy: 'Always' }));
  await until('VMI', () => vmiUid(h.c, 'rr'));
  await agentSets(h.c, 'rr', 'Running');
  await printable(h.c, 'rr', 'Running');
  assert.equal(getCondition({ status: await vmStatus(h.c, 'rr') }, 'RestartRequired'), undefined);
  await h.c.patch(VMS, 'rr', { spec: { template: { spec: { domain: { resources: { requests: { memory: '256Mi' } } } } } } }, { namespace: 'default' });
  await until('RestartRequired', async () => getCondition({ status: await vmStatus(h.c, 'rr') }, 'RestartRequired')?.status === 'True');
  const vm = await h.c.get(VMS, 'rr', { namespace: 'default' });
  assert.equal((vm.status as { observedGeneration?: number }).observedGeneration, vm.metadata?.generation);
  await agentSets(h.c, 'rr', 'Succeeded'); // the guest stops; Always makes a VMI from the new template
  await until('RestartRequired cleared', async () => !getCondition({ status: await vmStatus(h.c, 'rr') }, 'RestartRequired'));
  const vmi = await until('new VMI', () => tryGet(h.c, VMIS, 'rr'));
  assert.equal((vmi.spec as { domain: { resources: { requests: { memory: string } } } }).domain.resources.requests.memory, '256Mi');
});

test('dataVolumeTemplates: DataVolumes owned by the VM; no VMI until they succeed (Provisioning)', async () => {
  await using h = await setup();
  await h.c.create(VMS, withDisk(vmObject('d', { runStrategy: 'Always' }), 'd-root'));
  const dv = await until('DataVolume', () => tryGet(h.c, DATAVOLUMES, 'd-root'));
  const owner = (dv.metadata?.ownerReferences as { kind: string; name: string; controller: boolean }[])[0];
  assert.deepEqual([owner.kind, owner.name, owner.controller], ['VirtualMachine', 'd', true]);
  await printable(h.c, 'd', 'Provisioning');
  assert.equal(await vmiUid(h.c, 'd'), undefined);
  await updateStatus(h.c, DATAVOLUMES, 'default', 'd-root', (s) => {
    s.phase = 'Failed';
    s.conditions = [{ type: 'Ready', status: 'False', reason: 'Error', message: 'checksum mismatch' }];
  });
  await printable(h.c, 'd', 'DataVolumeError');
  await updateStatus(h.c, DATAVOLUMES, 'default', 'd-root', (s) => {
    s.phase = 'Succeeded';
    s.conditions = [];
  });
  await until('VMI', () => vmiUid(h.c, 'd'));
});

test('a VM whose DataVolume does not exist: ErrorDataVolumeNotFound', async () => {
  await using h = await setup();
  const vm = withDisk(vmObject('nf', { runStrategy: 'Always' }), 'missing');
  delete (vm.spec as Record<string, unknown>).dataVolumeTemplates;
  await h.c.create(VMS, vm);
  await printable(h.c, 'nf', 'ErrorDataVolumeNotFound');
  const ready = getCondition({ status: await vmStatus(h.c, 'nf') }, 'Ready');
  assert.equal(ready?.reason, 'DataVolumeNotFound');
});

function withDisk(vm: ReturnType<typeof vmObject>, dv: string) {
  const spec = vm.spec as { template: { spec: { domain: { devices: Record<string, unknown> }; volumes?: unknown[] } }; dataVolumeTemplates?: unknown[] };
  spec.template.spec.domain.devices.disks = [{ name: 'root', disk: { bus: 'virtio' } }];
  spec.template.spec.volumes = [{ name: 'root', dataVolume: { name: dv } }];
  spec.dataVolumeTemplates = [{ metadata: { name: dv }, spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '1Gi' } } } } }];
  return vm;
}

/**
 * API writes per VM start, create → Running: every write of the VM controller, the scheduler
 * and the agent's part (made as runtime.ts makes it), Events included, counted at the client.
 * The user's create of the VM and the DataVolume's own progress (written here as the
 * DataVolume controller and agent would) are left out.
 */
for (const disk of [false, true]) {
  test(`API writes per VM start ${disk ? 'with' : 'without'} dataVolumeTemplates`, async (t) => {
    await using h = await setup({ scheduler: true });
    await createNode(h.c, 'node-a');
    await settle(20); // the scheduler's node informer has the Node's status: no Unschedulable pass
    const vm = vmObject('w', { runStrategy: 'Always' });
    await h.c.create(VMS, disk ? withDisk(vm, 'w-root') : vm);
    const base = h.c.count();
    if (disk) {
      await until('DataVolume', () => tryGet(h.c, DATAVOLUMES, 'w-root'));
      await printable(h.c, 'w', 'Provisioning');
      await settle(20);
      const before = h.c.count();
      await updateStatus(h.c, DATAVOLUMES, 'default', 'w-root', (s) => {
        s.phase = 'Succeeded';
      });
      h.c.writes.splice(before, h.c.count() - before); // not the VM start's
    }
    await until('Scheduled', async () => ((await tryGet(h.c, VMIS, 'w'))?.status as { phase?: string } | undefined)?.phase === 'Scheduled');
    await agentStarts(h.c, 'w', 'node-a');
    await printable(h.c, 'w', 'Running');
    await settle(50);
    const writes = h.c.writes.slice(base);
    const events = writes.filter((w) => w.resource === 'events').length;
    const vmStatusWrites = writes.filter((w) => w.resource === 'virtualmachines/status').length;
    t.diagnostic(
      `API writes per VM start (${disk ? 'with' : 'without'} dataVolumeTemplates): ${writes.length} (${writes.length - events} without Events; VM status ${vmStatusWrites}): ${writes.map((w) => `${w.verb} ${w.resource} ${w.name}`).join(', ')}`,
    );
    // Usually 2 and 3 VM status writes (9 and 12 in all): the agent's start lands in the reconcile
    // that sees the VMI Scheduled. When the controller sees Scheduled on its own first (a race,
    // seen under load and once on a quiet CI run), one more: 3 and 4 (10 and 13).
    assert.ok(vmStatusWrites <= (disk ? 4 : 3), `VM status writes: ${vmStatusWrites}`);
    assert.ok(writes.length <= (disk ? 13 : 10), `writes: ${writes.length}`);
  });
}
