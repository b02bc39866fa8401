/**
 * IPAM controller unit tests over the in-memory client (real Resources over SQLite :memory:):
 * what a user checks with `kubectl get ipaddresses` and `kubectl describe vm`.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { ipam, macForIPv4, parseCidr, parseIPv4, refs } from '@vessel/api';
import type { KubeObject } from '@vessel/runtime';
import { ADDRESS_CONDITION, IpamController, staticBand, type IpamOptions } from './ipam.ts';
import { VirtualMachineController } from './vm.ts';
import { createNode, InMemoryClient, LaggingClient, NODES, settle, tryGet, until, vmObject, vmStatus } from './testing/harness.ts';

const { IPADDRESSES, VMIS, VMS } = refs;
const EVENTS = { group: '', version: 'v1', plural: 'events', namespaced: true };

const started = performance.now();
after(() => {
  console.log(`# ipam.test.ts: ${(performance.now() - started).toFixed(0)} ms`);
});

async function setup(opts: IpamOptions & { vmController?: boolean; before?: (c: InMemoryClient) => Promise<void>; client?: InMemoryClient } = {}) {
  const c = opts.client ?? new InMemoryClient();
  await c.namespaces('default');
  await opts.before?.(c);
  const ctl = new IpamController(c, undefined, opts);
  const vmc = opts.vmController ? new VirtualMachineController(c) : undefined;
  await ctl.start();
  await vmc?.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      await ctl.stop();
      await vmc?.stop();
      c.close();
    },
  };
}

/** A VM with a bridge interface on the pod network (and `extra` merged into its template). */
function vm(name: string, opts: { fixed?: string; mac?: string; runStrategy?: string } = {}): KubeObject {
  const o = vmObject(name, { runStrategy: opts.runStrategy ?? 'Halted' });
  const template = (
    o.spec as { template: { metadata?: Record<string, unknown>; spec: Record<string, unknown> & { domain: { devices: Record<string, unknown> } } } }
  ).template;
  template.spec.domain.devices.interfaces = [{ name: 'eth0', bridge: {}, ...(opts.mac ? { macAddress: opts.mac } : {}) }];
  template.spec.networks = [{ name: 'eth0', pod: {} }];
  if (opts.fixed) template.metadata = { annotations: { [ipam.FIXED_IP]: opts.fixed } };
  return o as KubeObject;
}

/** Every IPAddress whose parent is `resource/[ns/]name`. */
async function addressesOf(c: InMemoryClient, parent: string): Promise<KubeObject[]> {
  return ((await c.list(IPADDRESSES)).items as KubeObject[]).filter((a) => ipam.parentKey((a.spec as { parentRef: ipam.ParentRef }).parentRef) === parent);
}
const oneAddress = (c: InMemoryClient, parent: string) =>
  until(`an address for ${parent}`, async () => {
    const a = await addressesOf(c, parent);
    return a.length === 1 ? a[0] : undefined;
  });
const noAddress = (c: InMemoryClient, parent: string) => until(`${parent}'s address released`, async () => (await addressesOf(c, parent)).length === 0);
const uidOf = async (c: InMemoryClient, name: string) => (await c.get(VMS, name, { namespace: 'default' })).metadata!.uid!;
const eventsOf = async (c: InMemoryClient, name: string) =>
  (
    (await c.list(EVENTS, { namespace: 'default' })).items as (KubeObject & {
      involvedObject: { name: string };
      reason: string;
      type: string;
      message: string;
    })[]
  ).filter((e) => e.involvedObject.name === name);
const condition = async (c: InMemoryClient, name: string) =>
  (((await vmStatus(c, name)).conditions as { type: string; status: string; reason: string; message: string }[] | undefined) ?? []).find(
    (x) => x.type === ADDRESS_CONDITION,
  );

test('a VM on the pod network gets one address as soon as it is created, with its MAC, parent and uid', async () => {
  await using h = await setup();
  await h.c.create(VMS, vm('a'));
  const a = await oneAddress(h.c, 'virtualmachines/default/a');
  const ip = parseIPv4(a.metadata!.name!)!;
  // Above the static band (10.244.0.1 to 10.244.1.0), which is left for fixed addresses.
  assert.ok(ip > parseIPv4('10.244.1.0')! && ip < parseIPv4('10.244.255.255')!, a.metadata!.name);
  assert.deepEqual(a.spec, { parentRef: { group: 'kubevirt.io', resource: 'virtualmachines', namespace: 'default', name: 'a' } });
  assert.equal(a.metadata!.labels![ipam.NETWORK_LABEL], 'cluster');
  assert.equal(a.metadata!.labels![ipam.INTERFACE_LABEL], 'eth0');
  assert.equal(a.metadata!.annotations![ipam.CIDR_ANNOTATION], '10.244.0.0/16');
  assert.equal(a.metadata!.annotations![ipam.MAC_ANNOTATION], macForIPv4(ip));
  assert.equal(a.metadata!.annotations![ipam.PARENT_UID_ANNOTATION], await uidOf(h.c, 'a'));
  const ev = await until('AddressAllocated event', async () => (await eventsOf(h.c, 'a')).find((e) => e.reason === 'AddressAllocated'));
  assert.match(ev.message, new RegExp(`^Allocated ${a.metadata!.name!.replace(/\./g, '\\.')} in 10\\.244\\.0\\.0/16 to interface eth0`));

  // The interface's own MAC wins; a VM with no interface on the pod network gets nothing.
  await h.c.create(VMS, vm('m', { mac: '02:00:00:AA:BB:CC' }));
  assert.equal((await oneAddress(h.c, 'virtualmachines/default/m')).metadata!.annotations![ipam.MAC_ANNOTATION], '02:00:00:aa:bb:cc');
  const multus = vmObject('x', { runStrategy: 'Halted' });
  const t = (multus.spec as { template: { spec: Record<string, unknown> & { domain: { devices: Record<string, unknown> } } } }).template.spec;
  t.domain.devices.interfaces = [{ name: 'n1', bridge: {} }];
  t.networks = [{ name: 'n1', multus: { networkName: 'vlan100' } }];
  await h.c.create(VMS, multus);
  // A VM with no interfaces at all gets KubeVirt's default pod interface when it starts: it has an address too.
  await h.c.create(VMS, vmObject('plain', { runStrategy: 'Halted' }));
  assert.equal((await oneAddress(h.c, 'virtualmachines/default/plain')).metadata!.labels![ipam.INTERFACE_LABEL], 'default');
  await settle();
  assert.equal((await addressesOf(h.c, 'virtualmachines/default/x')).length, 0);
});

test('the address stays the same across stop/start (the VMI deleted and made again)', async () => {
  await using h = await setup({ vmController: true });
  await h.c.create(VMS, vm('s', { runStrategy: 'Always' }));
  const first = await oneAddress(h.c, 'virtualmachines/default/s');
  const vmi1 = await until('VMI', async () => (await tryGet(h.c, VMIS, 's'))?.metadata?.uid);
  await h.c.patch(VMS, 's', { spec: { runStrategy: 'Halted' } }, { namespace: 'default' });
  await until('VMI gone', async () => (await tryGet(h.c, VMIS, 's')) === undefined);
  await h.c.patch(VMS, 's', { spec: { runStrategy: 'Always' } }, { namespace: 'default' });
  await until('a new VMI', async () => {
    const u = (await tryGet(h.c, VMIS, 's'))?.metadata?.uid;
    return u && u !== vmi1;
  });
  await settle();
  const now = await addressesOf(h.c, 'virtualmachines/default/s');
  assert.deepEqual(
    now.map((a) => [a.metadata!.name, a.metadata!.uid]),
    [[first.metadata!.name, first.metadata!.uid]],
  );
  // The VM's VMI is not a parent of its own.
  assert.equal((await addressesOf(h.c, 'virtualmachineinstances/default/s')).length, 0);
});

test('one address per VM, however often it is reconciled; many VMs at once get distinct ones', async () => {
  await using h = await setup();
  await h.c.create(VMS, vm('r'));
  for (let i = 0; i < 10; i++) await h.c.patch(VMS, 'r', { metadata: { labels: { n: String(i) } } }, { namespace: 'default' });
  await Promise.all(Array.from({ length: 12 }, (_, i) => h.c.create(VMS, vm(`many-${i}`))));
  await until('13 addresses', async () => (await h.c.list(IPADDRESSES)).items.length === 13);
  await settle(50);
  const all = (await h.c.list(IPADDRESSES)).items;
  assert.equal(all.length, 13);
  assert.equal(new Set(all.map((a) => ipam.parentKey((a.spec as { parentRef: ipam.ParentRef }).parentRef))).size, 13);
  assert.equal((await addressesOf(h.c, 'virtualmachines/default/r')).length, 1);
  // No second allocation was made and released behind the scenes either.
  assert.equal(
    h.c.count((w) => w.resource === 'ipaddresses' && w.verb === 'create'),
    13,
  );
  assert.equal(
    h.c.count((w) => w.resource === 'ipaddresses' && w.verb === 'delete'),
    0,
  );
});

test("one address per VM even when the address cache lags behind the controller's own creates", async () => {
  await using h = await setup({ client: new LaggingClient({ ipaddresses: 40 }) });
  await h.c.create(VMS, vm('lag'));
  for (let i = 0; i < 10; i++) {
    await h.c.patch(VMS, 'lag', { metadata: { labels: { n: String(i) } } }, { namespace: 'default' });
    await settle(3);
  }
  await oneAddress(h.c, 'virtualmachines/default/lag');
  await settle(60);
  assert.equal((await addressesOf(h.c, 'virtualmachines/default/lag')).length, 1);
  assert.equal(
    h.c.count((w) => w.resource === 'ipaddresses' && w.verb === 'create'),
    1,
  );
});

test('deleting the VM (or a standalone VMI) releases its address', async () => {
  await using h = await setup();
  await h.c.create(VMS, vm('d'));
  await oneAddress(h.c, 'virtualmachines/default/d');
  await h.c.delete(VMS, 'd', { namespace: 'default' });
  await noAddress(h.c, 'virtualmachines/default/d');

  const vmi = { ...vm('solo', { fixed: '10.244.9.9' }) };
  const t = (vmi.spec as { template: { metadata: KubeObject['metadata']; spec: unknown } }).template;
  await h.c.create(VMIS, {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'solo', namespace: 'default', annotations: t.metadata!.annotations },
    spec: t.spec,
  });
  const a = await oneAddress(h.c, 'virtualmachineinstances/default/solo');
  assert.equal(a.metadata!.name, '10.244.9.9');
  await h.c.delete(VMIS, 'solo', { namespace: 'default' });
  await noAddress(h.c, 'virtualmachineinstances/default/solo');
});

test('a fixed address is taken exactly; changing the annotation moves the allocation', async () => {
  await using h = await setup();
  await h.c.create(VMS, vm('f', { fixed: '10.244.7.7' }));
  const a = await oneAddress(h.c, 'virtualmachines/default/f');
  assert.equal(a.metadata!.name, '10.244.7.7');
  assert.equal(a.metadata!.annotations![ipam.MAC_ANNOTATION], '0a:58:0a:f4:07:07');
  await h.c.patch(VMS, 'f', { spec: { template: { metadata: { annotations: { [ipam.FIXED_IP]: '10.244.7.8' } } } } }, { namespace: 'default' });
  await until('moved to .8', async () => {
    const all = await addressesOf(h.c, 'virtualmachines/default/f');
    return all.length === 1 && all[0].metadata!.name === '10.244.7.8';
  });
  assert.ok(
    await until('AddressReleased event', async () =>
      (await eventsOf(h.c, 'f')).find((e) => e.reason === 'AddressReleased' && e.message === 'Released 10.244.7.7'),
    ),
  );
  // Dropping the annotation keeps the address it has.
  await h.c.patch(VMS, 'f', { spec: { template: { metadata: { annotations: { [ipam.FIXED_IP]: null } } } } }, { namespace: 'default' });
  await settle();
  assert.deepEqual(
    (await addressesOf(h.c, 'virtualmachines/default/f')).map((x) => x.metadata!.name),
    ['10.244.7.8'],
  );
});

test('a fixed address someone else holds: a Warning and a condition, no other address; taken once released', async () => {
  await using h = await setup();
  await h.c.create(VMS, vm('holder', { fixed: '10.244.1.1' }));
  await oneAddress(h.c, 'virtualmachines/default/holder');
  await h.c.create(VMS, vm('late', { fixed: '10.244.1.1' }));
  const cond = await until('AddressConflict condition', () => condition(h.c, 'late'));
  assert.equal(cond.status, 'False');
  assert.equal(cond.reason, 'AddressConflict');
  assert.match(
    cond.message,
    /^the fixed address 10\.244\.1\.1 \(spec\.template\.metadata\.annotations\[ipam\.vessel\.io\/ip\]\) is already held by virtualmachines\/default\/holder/,
  );
  const warning = (await eventsOf(h.c, 'late')).find((e) => e.reason === 'AddressConflict');
  assert.equal(warning?.type, 'Warning');
  await settle();
  assert.equal((await addressesOf(h.c, 'virtualmachines/default/late')).length, 0);
  // Reconciles while in conflict do not repeat the Event.
  await h.c.patch(VMS, 'late', { metadata: { labels: { again: 'yes' } } }, { namespace: 'default' });
  await settle();
  assert.equal(
    (await eventsOf(h.c, 'late')).filter((e) => e.reason === 'AddressConflict').reduce((n, e) => n + Number((e as { count?: number }).count), 0),
    1,
  );

  await h.c.delete(VMS, 'holder', { namespace: 'default' });
  assert.equal((await oneAddress(h.c, 'virtualmachines/default/late')).metadata!.name, '10.244.1.1');
  await until('condition removed', async () => (await condition(h.c, 'late')) === undefined);
});

test('every node gets a gateway address, released when the node goes', async () => {
  await using h = await setup();
  await createNode(h.c, 'node-a');
  await createNode(h.c, 'node-b');
  const a = await oneAddress(h.c, 'nodes/node-a');
  const b = await oneAddress(h.c, 'nodes/node-b');
  assert.notEqual(a.metadata!.name, b.metadata!.name);
  assert.deepEqual(a.spec, { parentRef: { group: '', resource: 'nodes', name: 'node-a' } });
  assert.equal(a.metadata!.labels![ipam.NETWORK_LABEL], 'cluster');
  assert.equal(a.metadata!.labels![ipam.INTERFACE_LABEL], undefined);
  await h.c.delete(NODES, 'node-a');
  await noAddress(h.c, 'nodes/node-a');
  assert.equal((await addressesOf(h.c, 'nodes/node-b')).length, 1);
});

test('a full range (/30: two host addresses) is reported on the VM, and the address comes once one is free', async () => {
  await using h = await setup({ cidr: '10.9.0.0/30' });
  await h.c.create(VMS, vm('one'));
  await oneAddress(h.c, 'virtualmachines/default/one');
  await h.c.create(VMS, vm('two'));
  await oneAddress(h.c, 'virtualmachines/default/two');
  await h.c.create(VMS, vm('three'));
  const cond = await until('AddressRangeFull', () => condition(h.c, 'three'));
  assert.equal(cond.reason, 'AddressRangeFull');
  assert.equal(
    cond.message,
    'no free address in the VM network 10.9.0.0/30 (2 host addresses, all held): delete VMs, or start the server with a larger --vm-network-cidr',
  );
  assert.equal((await eventsOf(h.c, 'three')).find((e) => e.reason === 'AddressRangeFull')?.type, 'Warning');
  const names = (await h.c.list(IPADDRESSES)).items.map((a) => a.metadata!.name).sort();
  assert.deepEqual(names, ['10.9.0.1', '10.9.0.2']);
  await h.c.delete(VMS, 'one', { namespace: 'default' });
  await oneAddress(h.c, 'virtualmachines/default/three');
  await until('condition removed', async () => (await condition(h.c, 'three')) === undefined);
});

test('a VM deleted and made again under its name is a new parent: a new allocation, unless it asks for a fixed one', async () => {
  await using h = await setup();
  await h.c.create(VMS, vm('again'));
  const first = await oneAddress(h.c, 'virtualmachines/default/again');
  await h.c.delete(VMS, 'again', { namespace: 'default' });
  await h.c.create(VMS, vm('again'));
  const uid = await uidOf(h.c, 'again');
  const second = await until("the new incarnation's address", async () => {
    const all = await addressesOf(h.c, 'virtualmachines/default/again');
    return all.length === 1 && all[0].metadata!.annotations![ipam.PARENT_UID_ANNOTATION] === uid ? all[0] : undefined;
  });
  assert.notEqual(second.metadata!.name, first.metadata!.name);

  await h.c.create(VMS, vm('pinned', { fixed: '10.244.3.3' }));
  const old = await oneAddress(h.c, 'virtualmachines/default/pinned');
  await h.c.delete(VMS, 'pinned', { namespace: 'default' });
  await h.c.create(VMS, vm('pinned', { fixed: '10.244.3.3' }));
  const newUid = await uidOf(h.c, 'pinned');
  const now = await until('the same address, new parent uid', async () => {
    const all = await addressesOf(h.c, 'virtualmachines/default/pinned');
    return all.length === 1 && all[0].metadata!.annotations![ipam.PARENT_UID_ANNOTATION] === newUid ? all[0] : undefined;
  });
  assert.equal(now.metadata!.name, '10.244.3.3');
  assert.notEqual(now.metadata!.uid, old.metadata!.uid);
});

test('at start, allocations whose parent is gone or another incarnation are released', async () => {
  const orphan = (name: string, parent: ipam.ParentRef, uid: string) => ({
    apiVersion: 'networking.k8s.io/v1',
    kind: 'IPAddress',
    metadata: { name, labels: { [ipam.NETWORK_LABEL]: 'cluster' }, annotations: { [ipam.PARENT_UID_ANNOTATION]: uid } },
    spec: { parentRef: parent },
  });
  await using h = await setup({
    async before(c) {
      await c.create(IPADDRESSES, orphan('10.244.5.1', { group: 'kubevirt.io', resource: 'virtualmachines', namespace: 'default', name: 'gone' }, 'u1'));
      await c.create(VMS, vm('live'));
      await c.create(
        IPADDRESSES,
        orphan('10.244.5.2', { group: 'kubevirt.io', resource: 'virtualmachines', namespace: 'default', name: 'live' }, 'an-older-uid'),
      );
      // Not the cluster network's (a ClusterIP): left alone.
      await c.create(IPADDRESSES, {
        ...orphan('10.96.0.10', { group: '', resource: 'services', namespace: 'default', name: 'web' }, 'u3'),
        metadata: { name: '10.96.0.10', labels: { [ipam.NETWORK_LABEL]: 'services' } },
      });
    },
  });
  await noAddress(h.c, 'virtualmachines/default/gone');
  const live = await until('live re-allocated', async () => {
    const all = await addressesOf(h.c, 'virtualmachines/default/live');
    return all.length === 1 && all[0].metadata!.name !== '10.244.5.2' ? all[0] : undefined;
  });
  assert.equal(live.metadata!.annotations![ipam.PARENT_UID_ANNOTATION], await uidOf(h.c, 'live'));
  assert.ok(await tryGet(h.c, IPADDRESSES, '10.96.0.10'));
});

test('an invalid range is refused when the controller is made', () => {
  const c = new InMemoryClient();
  assert.throws(
    () => new IpamController(c, undefined, { cidr: '10.244.0.1/16' }),
    /invalid VM network CIDR "10\.244\.0\.1\/16": must be an IPv4 range such as 10\.244\.0\.0\/16/,
  );
  c.close();
});

test('dynamic addresses leave the start of the range to fixed ones, as Kubernetes splits ClusterIPs', async () => {
  assert.equal(staticBand(parseCidr('10.244.0.0/16')!), 256);
  assert.equal(staticBand(parseCidr('10.244.0.0/24')!), 16);
  assert.equal(staticBand(parseCidr('10.244.0.0/20')!), 256);
  assert.equal(staticBand(parseCidr('10.9.0.0/27')!), 0);
  await using h = await setup({ cidr: '10.8.0.0/24' });
  await h.c.create(VMS, vm('first'));
  assert.equal((await oneAddress(h.c, 'virtualmachines/default/first')).metadata!.name, '10.8.0.17');
});

test('resyncs of a steady state write nothing', async () => {
  await using h = await setup({ resyncMs: 10 });
  await createNode(h.c, 'node-a');
  await h.c.create(VMS, vm('steady'));
  await oneAddress(h.c, 'virtualmachines/default/steady');
  await oneAddress(h.c, 'nodes/node-a');
  await settle(20);
  const writes = h.c.count();
  await settle(60);
  assert.equal(h.c.count(), writes, JSON.stringify(h.c.writes.slice(writes)));
});
