/**
 * IPAM through the real API server and controllers (no agent, no QEMU): VMs created through the
 * API get their addresses, `kubectl get ipaddresses` shows them with their parent, a fixed
 * address someone holds is refused naming the annotation (nothing stored), and a deleted VM's
 * address is released. Also: a bad --vm-network-cidr stops `vessel server` before it starts.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { refs, type KubeObject } from '@vessel/api';
import { eventually, kubectlFor, KUBECTL_SKIP, rejects, run, startVessel, vm, type Vessel } from './harness.ts';

const { IPADDRESSES, VMS } = refs;

/** A Halted VM with a bridge interface on the pod network, and a fixed address if given. */
function vmOnPod(name: string, fixed?: string): KubeObject {
  const o = vm(name) as {
    metadata: Record<string, unknown>;
    spec: { template: { metadata?: unknown; spec: Record<string, unknown> & { domain: { devices: Record<string, unknown> } } } };
  };
  o.metadata.namespace = 'default';
  o.spec.template.spec.domain.devices.interfaces = [{ name: 'eth0', bridge: {} }];
  o.spec.template.spec.networks = [{ name: 'eth0', pod: {} }];
  if (fixed) o.spec.template.metadata = { annotations: { 'ipam.vessel.io/ip': fixed } };
  return o as KubeObject;
}

describe('IPAM through the API', { skip: KUBECTL_SKIP }, () => {
  let v: Vessel;
  const { kubectl, ok } = kubectlFor(() => v);
  const addressOf = (name: string) =>
    eventually(`${name}'s address`, async () =>
      (await v.client.list(IPADDRESSES)).items.find((a) => (a.spec as { parentRef: { name: string } }).parentRef.name === name),
    );

  before(async () => {
    v = await startVessel({ vmNetworkCidr: '10.250.0.0/24' });
  });
  after(async () => {
    await v?.close();
  });

  it('gives each VM an address in the configured range; kubectl shows it with its parent', async () => {
    await v.client.create(VMS, vmOnPod('web'), { namespace: 'default' });
    await v.client.create(VMS, vmOnPod('pinned', '10.250.0.50'), { namespace: 'default' });
    const web = (await addressOf('web')).metadata!.name!;
    assert.match(web, /^10\.250\.0\.\d+$/);
    assert.equal((await addressOf('pinned')).metadata!.name, '10.250.0.50');
    const table = await ok(['get', 'ipaddresses']);
    assert.match(table, /^NAME\s+PARENTREF/m);
    assert.match(table, new RegExp(`^${web.replace(/\./g, '\\.')}\\s+virtualmachines\\.kubevirt\\.io/default/web\\s*$`, 'm'));
    assert.match(table, /^10\.250\.0\.50\s+virtualmachines\.kubevirt\.io\/default\/pinned\s*$/m);
    const labelled = await ok(['get', 'ipaddresses', '-l', 'vessel.io/network=cluster,vessel.io/interface=eth0', '-o', 'name']);
    assert.match(labelled, /ipaddress\.networking\.k8s\.io\/10\.250\.0\.50/);
    // The Event follows the allocation.
    await eventually(
      'the AddressAllocated event',
      async () => {
        const events = await ok(['get', 'events', '-o', 'jsonpath={range .items[*]}{.involvedObject.name} {.reason} {.message}{"\\n"}{end}']);
        return /^pinned AddressAllocated Allocated 10\.250\.0\.50 in 10\.250\.0\.0\/24 to interface eth0 \(MAC 0a:58:0a:fa:00:32\)$/m.test(events) || undefined;
      },
      10_000,
    );
  });

  it('refuses a fixed address another VM holds, or one outside the range, naming the field; nothing is stored', async () => {
    const field = 'spec.template.metadata.annotations[ipam.vessel.io/ip]';
    const e = await rejects(
      v.client.create(VMS, vmOnPod('clash', '10.250.0.50'), { namespace: 'default' }),
      422,
      /already held by virtualmachines\/default\/pinned/,
    );
    assert.deepEqual(
      e.causes.map((c) => c.field),
      [field],
    );
    const out = await rejects(
      v.client.create(VMS, vmOnPod('clash', '10.244.0.5'), { namespace: 'default' }),
      422,
      /must be in the VM network 10\.250\.0\.0\/24/,
    );
    assert.deepEqual(
      out.causes.map((c) => c.field),
      [field],
    );
    await rejects(v.client.get(VMS, 'clash', { namespace: 'default' }), 404);
    // As kubectl prints it.
    const r = await kubectl(['create', '-f', '-'], JSON.stringify(vmOnPod('clash', '10.250.0.50')));
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /spec\.template\.metadata\.annotations\[ipam\.vessel\.io\/ip\]: Invalid value: "10\.250\.0\.50": already held by virtualmachines\/default\/pinned/,
    );
    // Back to back, before the controller has allocated for the first: the second is refused all the same.
    await v.client.create(VMS, vmOnPod('quick', '10.250.0.60'), { namespace: 'default' });
    await rejects(
      v.client.create(VMS, vmOnPod('quick2', '10.250.0.60'), { namespace: 'default' }),
      422,
      /already (held|asked for) by virtualmachines\/default\/quick:/,
    );
    // Moving an existing VM onto a held address is refused the same way.
    await rejects(
      v.client.patch(VMS, 'web', { spec: { template: { metadata: { annotations: { 'ipam.vessel.io/ip': '10.250.0.50' } } } } }, { namespace: 'default' }),
      422,
      /already held/,
    );
  });

  it('releases the address when the VM is deleted', async () => {
    const web = (await addressOf('web')).metadata!.name!;
    await v.client.delete(VMS, 'web', { namespace: 'default' });
    await eventually('the address released', async () => ((await v.client.list(IPADDRESSES)).items.some((a) => a.metadata!.name === web) ? undefined : true));
  });
});

describe('vessel server --vm-network-cidr', () => {
  it('refuses a range that is not one, before starting', async () => {
    const r = await run('bin/vessel', ['server', '--data-dir', '/nonexistent/never-made', '--vm-network-cidr', '10.244.0.1/16'], { timeoutMs: 30_000 });
    assert.equal(r.code, 1, r.err);
    assert.match(
      r.err,
      /^Error: --vm-network-cidr "10\.244\.0\.1\/16" must be an IPv4 range such as 10\.244\.0\.0\/16: host bits zero, prefix length 8 to 30$/m,
    );
  });
});
