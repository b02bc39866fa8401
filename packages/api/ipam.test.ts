/** The IPAM contract's pure helpers: which interface is on the cluster network, fixed-address checks, a VMI's parent. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseCidr } from './ip.ts';
import { fixedIpProblem, podInterface, vmiParent, vmNetwork, VmNetworkCidrError } from './ipam.ts';

test("podInterface: the interface named by the pod network; KubeVirt's default when the spec names none", () => {
  const spec = (interfaces: unknown[], networks: unknown[], devices: Record<string, unknown> = {}) => ({
    domain: { devices: { interfaces, ...devices } },
    networks,
  });
  assert.deepEqual(
    podInterface(
      spec(
        [
          { name: 'a', bridge: {} },
          { name: 'b', masquerade: {}, macAddress: '02:AB:00:00:00:01' },
        ],
        [
          { name: 'a', multus: { networkName: 'n' } },
          { name: 'b', pod: {} },
        ],
      ),
    ),
    { name: 'b', macAddress: '02:ab:00:00:00:01' },
  );
  assert.equal(podInterface(spec([{ name: 'a', bridge: {} }], [{ name: 'a', multus: { networkName: 'n' } }])), undefined);
  assert.equal(podInterface(spec([], [{ name: 'p', pod: {} }])), undefined, 'a network without its interface');
  assert.deepEqual(podInterface(spec([], [])), { name: 'default' });
  assert.deepEqual(podInterface({ domain: {} }), { name: 'default' });
  assert.equal(podInterface(spec([], [], { autoattachPodInterface: false })), undefined);
  assert.equal(podInterface(undefined), undefined);
});

test('fixedIpProblem: canonical, inside the range, a host address', () => {
  const cidr = parseCidr('10.244.0.0/16')!;
  const f = 'spec.template.metadata.annotations[ipam.vessel.io/ip]';
  assert.equal(fixedIpProblem(f, '10.244.3.4', cidr), undefined);
  assert.equal(fixedIpProblem(f, '10.244.0.1', cidr), undefined);
  assert.deepEqual(fixedIpProblem(f, '10.244.300.1', cidr), {
    reason: 'FieldValueInvalid',
    field: f,
    message: 'Invalid value: "10.244.300.1": must be an IPv4 address in canonical form, such as 10.244.0.5',
  });
  assert.match(fixedIpProblem(f, '10.243.255.254', cidr)!.message, /must be in the VM network 10\.244\.0\.0\/16$/);
  assert.match(fixedIpProblem(f, '10.244.0.0', cidr)!.message, /is the network address/);
  assert.match(fixedIpProblem(f, '10.244.255.255', cidr)!.message, /is the broadcast address/);
});

test('vmiParent: the VM that owns the VMI, else the VMI', () => {
  assert.deepEqual(
    vmiParent({
      metadata: { name: 'a', namespace: 'ns', uid: 'vmi-uid', ownerReferences: [{ kind: 'VirtualMachine', name: 'a', uid: 'vm-uid', controller: true }] },
    }),
    { group: 'kubevirt.io', resource: 'virtualmachines', namespace: 'ns', name: 'a', uid: 'vm-uid' },
  );
  assert.deepEqual(vmiParent({ metadata: { name: 'solo', namespace: 'ns', uid: 'vmi-uid' } }), {
    group: 'kubevirt.io',
    resource: 'virtualmachineinstances',
    namespace: 'ns',
    name: 'solo',
    uid: 'vmi-uid',
  });
});

test('vmNetwork: the default, a given range, or VmNetworkCidrError (code InvalidVmNetworkCidr) with the rule', () => {
  assert.equal(vmNetwork().text, '10.244.0.0/16');
  assert.equal(vmNetwork('10.9.0.0/24').size, 256);
  for (const bad of ['10.244.0.1/16', '10.244.0.0/31', 'fd00::/64', '']) {
    assert.throws(
      () => vmNetwork(bad),
      (e: unknown) =>
        e instanceof VmNetworkCidrError &&
        e.code === 'InvalidVmNetworkCidr' &&
        e.message === `invalid VM network CIDR "${bad}": must be an IPv4 range such as 10.244.0.0/16: host bits zero, prefix length 8 to 30`,
    );
  }
});
