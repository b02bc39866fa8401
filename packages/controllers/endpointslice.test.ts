/**
 * EndpointSlice controller unit tests over the in-memory client (real Resources over SQLite
 * :memory:). VMIs' statuses are written here as the node agent writes them (Running, Ready,
 * status.interfaces with the pod-network address): the agent stand-in, not a mock of the API.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { refs } from '@vessel/api';
import { setCondition, updateStatus, type KubeObject } from '@vessel/runtime';
import { EndpointSliceController, MANAGED_BY } from './endpointslice.ts';
import { InMemoryClient, settle, until } from './testing/harness.ts';

const { ENDPOINTSLICES, EVENTS, SERVICES, VMIS } = refs;
const started = performance.now();
after(() => {
  console.log(`# endpointslice.test.ts: ${(performance.now() - started).toFixed(0)} ms`);
});

type Obj = Record<string, unknown>;
interface Slice {
  metadata: { name: string; labels: Record<string, string>; ownerReferences: Obj[] };
  endpoints: { addresses: string[]; conditions: Record<string, boolean>; nodeName?: string; targetRef: { name: string } }[];
  ports: Obj[];
}

async function setup() {
  const c = new InMemoryClient();
  await c.namespaces('default', 'other');
  const ctl = new EndpointSliceController(c);
  await ctl.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      await ctl.stop();
      c.close();
    },
  };
}

function vmi(name: string, labels: Record<string, string>, ns = 'default'): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: ns, labels },
    spec: { domain: { cpu: { cores: 1 }, resources: { requests: { memory: '128Mi' } }, devices: {} } },
  };
}

/** The agent's write once a VMI runs on `node` with `ip` on its pod network ("default", as defaulting names it). */
async function running(c: InMemoryClient, name: string, ip: string, node = 'node-a', ready = true, ns = 'default'): Promise<void> {
  await updateStatus(c, VMIS, ns, name, (s) => {
    s.phase = 'Running';
    s.nodeName = node;
    s.interfaces = [{ name: 'default', ipAddress: ip, ipAddresses: [ip], mac: '0a:58:0a:f4:00:05', interfaceName: 'eth0', infoSource: 'domain' }];
    setCondition(s, { type: 'Ready', status: ready ? 'True' : 'False', reason: ready ? '' : 'GuestNotRunning' }, false);
  });
}

function service(name: string, selector: Record<string, string> | undefined, ports: Obj[] = [{ port: 80, targetPort: 8080 }]): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name, namespace: 'default', labels: { team: 'a' } },
    spec: { ...(selector ? { selector } : {}), ports },
  };
}

const slicesOf = async (c: InMemoryClient, svc: string) =>
  (await c.list(ENDPOINTSLICES, { namespace: 'default', labelSelector: `kubernetes.io/service-name=${svc}` })).items as unknown as Slice[];
const addresses = (slices: Slice[]) => slices.flatMap((s) => s.endpoints.map((e) => e.addresses[0])).sort();
/** Waits until the Service's slices list exactly `want` (addresses), and returns them. */
const sliceWith = (c: InMemoryClient, svc: string, want: string[], check: (s: Slice[]) => boolean = () => true) =>
  until(`${svc} slices ${want.join(',')}`, async () => {
    const s = await slicesOf(c, svc);
    return s.length > 0 && JSON.stringify(addresses(s)) === JSON.stringify(want) && check(s) ? s : undefined;
  });

test('a Service gets a slice of the selected VMIs: address, ready, node, targetRef, ports from targetPort, labels, owner', async () => {
  await using h = await setup();
  const svc = await h.c.create(SERVICES, service('web', { app: 'web' }));
  for (const [n, ip, node] of [
    ['web-1', '10.244.0.5', 'node-a'],
    ['web-2', '10.244.0.6', 'node-b'],
  ]) {
    await h.c.create(VMIS, vmi(n, { app: 'web' }));
    await running(h.c, n, ip, node);
  }
  await h.c.create(VMIS, vmi('db', { app: 'db' }));
  await running(h.c, 'db', '10.244.0.9');
  const [slice] = await sliceWith(h.c, 'web', ['10.244.0.5', '10.244.0.6']);
  assert.equal(slice.metadata.labels['endpointslice.kubernetes.io/managed-by'], MANAGED_BY);
  assert.equal(slice.metadata.labels.team, 'a', "the Service's labels are copied");
  assert.deepEqual(
    slice.metadata.ownerReferences.map((o) => [o.kind, o.name, o.uid, o.controller]),
    [['Service', 'web', svc.metadata?.uid, true]],
  );
  assert.deepEqual(slice.ports, [{ name: '', port: 8080, protocol: 'TCP' }]);
  const e1 = slice.endpoints.find((e) => e.targetRef.name === 'web-1')!;
  assert.deepEqual(e1.conditions, { ready: true, serving: true, terminating: false });
  assert.equal(e1.nodeName, 'node-a');
  assert.deepEqual((e1.targetRef as Obj).kind, 'VirtualMachineInstance');
});

test('follows VMIs: not ready, moved to another node, relabelled away and back, deleted; one write per change', async () => {
  await using h = await setup();
  await h.c.create(SERVICES, service('web', { app: 'web' }));
  await h.c.create(VMIS, vmi('web-1', { app: 'web' }));
  await running(h.c, 'web-1', '10.244.0.5');
  await sliceWith(h.c, 'web', ['10.244.0.5']);
  const writes = () => h.c.count((w) => w.resource === 'endpointslices');
  const before = writes();

  await running(h.c, 'web-1', '10.244.0.5', 'node-a', false);
  await sliceWith(h.c, 'web', ['10.244.0.5'], (s) => s[0].endpoints[0].conditions.ready === false && s[0].endpoints[0].conditions.serving === false);
  await settle();
  assert.equal(writes() - before, 1, 'Ready going false is one slice write');

  await running(h.c, 'web-1', '10.244.0.5', 'node-b');
  await sliceWith(h.c, 'web', ['10.244.0.5'], (s) => s[0].endpoints[0].nodeName === 'node-b' && s[0].endpoints[0].conditions.ready);

  await h.c.patch(VMIS, 'web-1', { metadata: { labels: { app: 'other' } } }, { namespace: 'default' });
  await sliceWith(h.c, 'web', []);
  await h.c.patch(VMIS, 'web-1', { metadata: { labels: { app: 'web' } } }, { namespace: 'default' });
  await sliceWith(h.c, 'web', ['10.244.0.5']);

  await h.c.delete(VMIS, 'web-1', { namespace: 'default' });
  await sliceWith(h.c, 'web', []);
  await settle();
  assert.equal(writes() - before, 5, 'five changes, five writes');
});

test('a terminating VMI stays listed as terminating and not ready; a VMI without an address or in a final phase is left out', async () => {
  await using h = await setup();
  await h.c.create(SERVICES, service('web', { app: 'web' }));
  await h.c.create(VMIS, vmi('web-1', { app: 'web' }));
  await running(h.c, 'web-1', '10.244.0.5');
  await h.c.create(VMIS, vmi('booting', { app: 'web' })); // no status.interfaces yet
  await h.c.create(VMIS, vmi('done', { app: 'web' }));
  await running(h.c, 'done', '10.244.0.7');
  await updateStatus(h.c, VMIS, 'default', 'done', (s) => {
    s.phase = 'Succeeded';
  });
  await sliceWith(h.c, 'web', ['10.244.0.5']);
  await h.c.patch(VMIS, 'web-1', { metadata: { finalizers: ['test/hold'] } }, { namespace: 'default' });
  await h.c.delete(VMIS, 'web-1', { namespace: 'default' });
  const [s] = await sliceWith(h.c, 'web', ['10.244.0.5'], (x) => x[0].endpoints[0].conditions.terminating);
  assert.deepEqual(s.endpoints[0].conditions, { ready: false, serving: true, terminating: true });
  await h.c.patch(VMIS, 'web-1', { metadata: { finalizers: null } }, { namespace: 'default' });
  await sliceWith(h.c, 'web', []);
});

test('named targetPorts are left out with a Warning Event; Services without a selector, or ExternalName, get no slice; slices go with their Service', async () => {
  await using h = await setup();
  await h.c.create(
    SERVICES,
    service('mixed', { app: 'web' }, [
      { name: 'http', port: 80, targetPort: 8080 },
      { name: 'admin', port: 9000, targetPort: 'admin' },
    ]),
  );
  await h.c.create(SERVICES, service('manual', undefined));
  const [slice] = await sliceWith(h.c, 'mixed', []);
  assert.deepEqual(slice.ports, [{ name: 'http', port: 8080, protocol: 'TCP' }]);
  const ev = await until('warning event', async () =>
    (await h.c.list(EVENTS, { namespace: 'default' })).items.find((e) => (e as Obj).reason === 'NamedTargetPortUnresolved'),
  );
  assert.match(String((ev as Obj).message), /"admin".*port number/);
  await h.c.create(SERVICES, {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: 'ext', namespace: 'default' },
    spec: { type: 'ExternalName', externalName: 'db.example.com', selector: { app: 'web' } },
  });
  await settle();
  assert.deepEqual(await slicesOf(h.c, 'manual'), []);
  assert.deepEqual(await slicesOf(h.c, 'ext'), [], 'an ExternalName Service has no endpoints');
  // A slice removed by hand comes back; the Service's deletion takes its slices.
  await h.c.delete(ENDPOINTSLICES, slice.metadata.name, { namespace: 'default' });
  await sliceWith(h.c, 'mixed', []);
  await h.c.delete(SERVICES, 'mixed', { namespace: 'default' });
  await until('slices gone', async () => (await slicesOf(h.c, 'mixed')).length === 0);
});

test('a selector change moves the endpoints; VMIs in other namespaces are never selected', async () => {
  await using h = await setup();
  await h.c.create(SERVICES, service('web', { app: 'web', tier: 'a' }));
  await h.c.create(VMIS, vmi('a1', { app: 'web', tier: 'a' }));
  await running(h.c, 'a1', '10.244.0.1');
  await h.c.create(VMIS, vmi('b1', { app: 'web', tier: 'b' }));
  await running(h.c, 'b1', '10.244.0.2');
  await h.c.create(VMIS, vmi('x1', { app: 'web', tier: 'a' }, 'other'));
  await running(h.c, 'x1', '10.244.0.3', 'node-a', true, 'other');
  await sliceWith(h.c, 'web', ['10.244.0.1']);
  await h.c.patch(SERVICES, 'web', { spec: { selector: { app: 'web', tier: 'b' } } }, { namespace: 'default' });
  await sliceWith(h.c, 'web', ['10.244.0.2']);
});
