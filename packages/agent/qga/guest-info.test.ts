/**
 * The mapping from qemu-ga's JSON (as qemu-ga 7.2 answers in a Debian guest) to KubeVirt's
 * shapes: guestosinfo, userlist, filesystemlist, and the status fields (guestOSInfo, interfaces).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileSystemList, guestAgentInfo, interfacesFromQga, mergeInterfaces, osInfoFromQga, userList } from './guest-info.ts';
import { guestStatus } from '../vms/runtime.ts';

const OSINFO = {
  'kernel-release': '6.1.0-28-cloud-amd64',
  'kernel-version': '#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)',
  machine: 'x86_64',
  id: 'debian',
  name: 'Debian GNU/Linux',
  'pretty-name': 'Debian GNU/Linux 12 (bookworm)',
  version: '12 (bookworm)',
  'version-id': '12',
};
const FSINFO = [
  {
    name: 'vda2',
    mountpoint: '/',
    type: 'ext4',
    'used-bytes': 10485760,
    'total-bytes': 80000000,
    disk: [
      { 'pci-controller': { domain: 0, bus: 0, slot: 4, function: 0 }, 'bus-type': 'virtio', bus: 0, target: 0, unit: 0, serial: 'root0', dev: '/dev/vda2' },
    ],
  },
];
const USERS = [
  { user: 'root', 'login-time': 1733500000.25 },
  { user: 'ada', domain: 'CORP', 'login-time': 1733500100 },
];

test('guest-get-osinfo becomes VirtualMachineInstanceGuestOSInfo', () => {
  assert.deepEqual(osInfoFromQga(OSINFO), {
    id: 'debian',
    name: 'Debian GNU/Linux',
    prettyName: 'Debian GNU/Linux 12 (bookworm)',
    version: '12 (bookworm)',
    versionId: '12',
    kernelRelease: '6.1.0-28-cloud-amd64',
    kernelVersion: '#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)',
    machine: 'x86_64',
  });
  // A guest without /etc/os-release: only uname's part, nothing empty.
  assert.deepEqual(osInfoFromQga({ 'kernel-release': '6.1', machine: 'x86_64', id: '' }), { kernelRelease: '6.1', machine: 'x86_64' });
  assert.deepEqual(osInfoFromQga(null), {});
});

test('guestosinfo: the agent version, commands, hostname, OS, timezone, users and filesystems', () => {
  const info = guestAgentInfo({
    info: {
      version: '7.2.15',
      supported_commands: [
        { name: 'guest-ping', enabled: true, 'success-response': true },
        { name: 'guest-exec', enabled: false },
      ],
    },
    osinfo: OSINFO,
    hostname: { 'host-name': 'tiny' },
    timezone: { zone: 'UTC', offset: 0 },
    users: USERS,
    fsinfo: FSINFO,
  });
  assert.equal(info.guestAgentVersion, '7.2.15');
  assert.deepEqual(info.supportedCommands, [
    { name: 'guest-ping', enabled: true },
    { name: 'guest-exec', enabled: false },
  ]);
  assert.equal(info.hostname, 'tiny');
  assert.equal(info.os?.prettyName, 'Debian GNU/Linux 12 (bookworm)');
  assert.equal(info.timezone, 'UTC, 0');
  assert.equal(info.userList?.length, 2);
  assert.equal(info.fsInfo?.disks?.[0].mountPoint, '/');
  // Commands the agent refused (undefined answers) leave empty parts, not a failure.
  const bare = guestAgentInfo({ info: { version: '5.2' }, osinfo: undefined, hostname: undefined, timezone: undefined, users: undefined, fsinfo: undefined });
  assert.deepEqual(bare.userList, []);
  assert.deepEqual(bare.fsInfo, { disks: [] });
  assert.equal(bare.timezone, ', 0');
});

test('userlist and filesystemlist in their list shapes', () => {
  assert.deepEqual(userList(USERS).items, [
    { userName: 'root', loginTime: 1733500000.25 },
    { userName: 'ada', domain: 'CORP', loginTime: 1733500100 },
  ]);
  assert.equal(userList([]).kind, 'VirtualMachineInstanceGuestOSUserList');
  assert.deepEqual(userList([]).items, []);
  const fs = fileSystemList(FSINFO);
  assert.equal(fs.kind, 'VirtualMachineInstanceFileSystemList');
  assert.deepEqual(fs.items, [
    { diskName: 'vda2', mountPoint: '/', fileSystemType: 'ext4', totalBytes: 80000000, usedBytes: 10485760, disk: [{ busType: 'virtio', serial: 'root0' }] },
  ]);
  // qemu-ga before 3.0 has no byte counts; disks without a serial.
  assert.deepEqual(fileSystemList([{ name: 'sda1', mountpoint: '/boot', type: 'vfat', disk: [{ 'bus-type': 'scsi' }] }]).items, [
    { diskName: 'sda1', mountPoint: '/boot', fileSystemType: 'vfat', totalBytes: 0, usedBytes: 0, disk: [{ busType: 'scsi' }] },
  ]);
});

const IFACES = [
  { name: 'lo', 'hardware-address': '00:00:00:00:00:00', 'ip-addresses': [{ 'ip-address-type': 'ipv4', 'ip-address': '127.0.0.1', prefix: 8 }] },
  {
    name: 'eth0',
    'hardware-address': '52:54:00:AB:CD:EF',
    'ip-addresses': [
      { 'ip-address-type': 'ipv4', 'ip-address': '10.244.0.7', prefix: 16 },
      { 'ip-address-type': 'ipv6', 'ip-address': 'fe80::5054:ff:feab:cdef', prefix: 64 },
    ],
  },
  { name: 'eth1', 'hardware-address': '52:54:00:00:00:02' },
];

test('guest-network-get-interfaces: no loopback, no link-local addresses, lower-case MACs', () => {
  assert.deepEqual(interfacesFromQga(IFACES), [
    { interfaceName: 'eth0', mac: '52:54:00:ab:cd:ef', ipAddresses: ['10.244.0.7'] },
    { interfaceName: 'eth1', mac: '52:54:00:00:00:02', ipAddresses: [] },
  ]);
});

test('status.interfaces: the guest part merged by MAC, guest-only interfaces added, the IPs of a masquerade pod kept', () => {
  const guest = interfacesFromQga(IFACES);
  const merged = mergeInterfaces(
    [{ name: 'default', mac: '52:54:00:ab:cd:ef', ipAddress: '10.244.0.7', ipAddresses: ['10.244.0.7'], infoSource: 'domain' }],
    guest,
  );
  assert.deepEqual(merged, [
    {
      name: 'default',
      mac: '52:54:00:ab:cd:ef',
      interfaceName: 'eth0',
      ipAddress: '10.244.0.7',
      ipAddresses: ['10.244.0.7'],
      infoSource: 'domain, guest-agent',
    },
    { interfaceName: 'eth1', mac: '52:54:00:00:00:02', infoSource: 'guest-agent' },
  ]);
  // Masquerade: the guest holds 10.0.2.2, the pod the cluster IP: the pod's addresses stay.
  const masq = mergeInterfaces(
    [{ name: 'default', mac: '52:54:00:ab:cd:ef', ipAddress: '10.244.0.9', ipAddresses: ['10.244.0.9'], podInterfaceName: 'veth', infoSource: 'domain' }],
    [{ interfaceName: 'eth0', mac: '52:54:00:ab:cd:ef', ipAddresses: ['10.0.2.2'] }],
  );
  assert.deepEqual(masq[0].ipAddresses, ['10.244.0.9']);
  assert.equal(masq[0].interfaceName, 'eth0');
  assert.equal(masq[0].ipAddress, '10.244.0.9');
  // The guest stops reporting it: back to the domain's view.
  assert.deepEqual(mergeInterfaces(merged.slice(0, 1), []), [
    { name: 'default', mac: '52:54:00:ab:cd:ef', ipAddress: '10.244.0.7', ipAddresses: ['10.244.0.7'], infoSource: 'domain' },
  ]);
});

test('the status is written only when the guest reports something new', () => {
  const s: Record<string, unknown> = { phase: 'Running', interfaces: [{ name: 'default', mac: '52:54:00:ab:cd:ef', infoSource: 'domain' }], guestOSInfo: {} };
  const g = { guestOSInfo: osInfoFromQga(OSINFO), interfaces: interfacesFromQga(IFACES) };
  assert.equal(guestStatus(s, g), true);
  assert.equal((s.guestOSInfo as { id: string }).id, 'debian');
  assert.equal(guestStatus(s, g), false);
  // An agent that cannot tell the OS keeps what was known.
  assert.equal(guestStatus(s, { guestOSInfo: {}, interfaces: g.interfaces }), false);
});
