/**
 * The vsphere provider's pure parts: SOAP replies and faults, the inventory from property sets,
 * VMDK descriptors, the Secret, warm-only concerns; CBT and NFC replies (QueryChangedDiskAreas'
 * DiskChangeInfo, a snapshot's disk changeIds, an HttpNfcLeaseInfo), written after VMware's
 * vSphere Web Services API reference (vcsim has neither call).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { envelope, parseDatastorePath, parseReply, parseRetrieveResult, VsphereError } from './soap.ts';
import { buildInventory, type VsphereVm } from './inventory.ts';
import { flatExtent, parseSecret } from './provider.ts';
import { mergeAreas, parseChangeIds, parseDiskChangeInfo, parseDiskFiles, parseLeaseInfo } from './cbt.ts';
import { planConcerns } from '../validation.ts';

const soap = (body: string) =>
  `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>${body}</soapenv:Body></soapenv:Envelope>`;

test('envelope escapes nothing it should not; a reply and a fault are read', () => {
  assert.match(envelope('Login', '<x/>'), /<Login xmlns="urn:vim25"><x\/><\/Login>/);
  const res = parseReply(soap('<LoginResponse xmlns="urn:vim25"><returnval><key>k</key></returnval></LoginResponse>'), 'Login');
  assert.equal(res.children[0].children[0].text, 'k');
  const fault = soap(
    '<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Login failure</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault>',
  );
  assert.throws(
    () => parseReply(fault, 'Login'),
    (e: unknown) => e instanceof VsphereError && e.code === 'LoginFailed' && /Login failure \(InvalidLogin\)/.test(e.message),
  );
  assert.throws(
    () => parseReply('<!DOCTYPE x [<!ENTITY a "b">]><x/>', 'Login'),
    (e: unknown) => e instanceof VsphereError && e.code === 'BadReply',
  );
  assert.throws(
    () => parseReply(soap('<Other/>'), 'Login'),
    (e: unknown) => e instanceof VsphereError && e.code === 'BadReply',
  );
  assert.deepEqual(parseDatastorePath('[LocalDS_0] vm1/disk1.vmdk'), { datastore: 'LocalDS_0', path: 'vm1/disk1.vmdk' });
  assert.equal(parseDatastorePath('vm1/disk1.vmdk'), undefined);
});

const vmProps = `
<objects><obj type="Datacenter">datacenter-2</obj><propSet><name>name</name><val xsi:type="xsd:string">DC0</val></propSet><propSet><name>parent</name><val type="Folder">group-d1</val></propSet></objects>
<objects><obj type="Folder">folder-3</obj><propSet><name>name</name><val>vm</val></propSet><propSet><name>parent</name><val type="Datacenter">datacenter-2</val></propSet></objects>
<objects><obj type="ClusterComputeResource">domain-c7</obj><propSet><name>name</name><val>C0</val></propSet><propSet><name>parent</name><val type="Folder">folder-4</val></propSet></objects>
<objects><obj type="HostSystem">host-9</obj><propSet><name>name</name><val>esx1</val></propSet><propSet><name>parent</name><val type="ClusterComputeResource">domain-c7</val></propSet></objects>
<objects><obj type="Network">network-7</obj><propSet><name>name</name><val>VM Network</val></propSet></objects>
<objects><obj type="DistributedVirtualPortgroup">dvportgroup-13</obj><propSet><name>name</name><val>PG &amp; co</val></propSet></objects>
<objects><obj type="Datastore">datastore-11</obj><propSet><name>name</name><val>ds1</val></propSet><propSet><name>parent</name><val type="Folder">folder-5</val></propSet><propSet><name>summary.capacity</name><val>1000</val></propSet></objects>
<objects><obj type="VirtualMachine">vm-42</obj>
 <propSet><name>name</name><val>web 1</val></propSet>
 <propSet><name>parent</name><val type="Folder">folder-3</val></propSet>
 <propSet><name>config.uuid</name><val>4207a4e2-0000-0000-0000-000000000001</val></propSet>
 <propSet><name>config.firmware</name><val>efi</val></propSet>
 <propSet><name>config.changeTrackingEnabled</name><val>false</val></propSet>
 <propSet><name>config.hardware.numCPU</name><val>4</val></propSet>
 <propSet><name>config.hardware.numCoresPerSocket</name><val>2</val></propSet>
 <propSet><name>config.hardware.memoryMB</name><val>2048</val></propSet>
 <propSet><name>runtime.powerState</name><val>poweredOn</val></propSet>
 <propSet><name>runtime.host</name><val type="HostSystem">host-9</val></propSet>
 <propSet><name>snapshot</name><val xsi:type="VirtualMachineSnapshotInfo"><rootSnapshotList><name>s1</name><childSnapshotList><name>s2</name></childSnapshotList></rootSnapshotList></val></propSet>
 <propSet><name>config.hardware.device</name><val xsi:type="ArrayOfVirtualDevice">
  <VirtualDevice xsi:type="VirtualIDEController"><key>200</key></VirtualDevice>
  <VirtualDevice xsi:type="VirtualDisk"><key>2000</key><deviceInfo><label>Hard disk 1</label></deviceInfo>
   <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] web 1/web 1.vmdk</fileName><datastore type="Datastore">datastore-11</datastore><sharing>sharingNone</sharing></backing>
   <capacityInKB>1048576</capacityInKB><capacityInBytes>1073741824</capacityInBytes></VirtualDevice>
  <VirtualDevice xsi:type="VirtualDisk"><key>2001</key><deviceInfo><label>Hard disk 2</label></deviceInfo>
   <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] shared/data.vmdk</fileName><sharing>sharingMultiWriter</sharing></backing>
   <capacityInKB>2048</capacityInKB></VirtualDevice>
  <VirtualDevice xsi:type="VirtualVmxnet3"><key>4000</key><deviceInfo><label>Network adapter 1</label></deviceInfo>
   <backing xsi:type="VirtualEthernetCardNetworkBackingInfo"><deviceName>VM Network</deviceName><network type="Network">network-7</network></backing><macAddress>00:50:56:AA:BB:01</macAddress></VirtualDevice>
  <VirtualDevice xsi:type="VirtualE1000e"><key>4001</key><deviceInfo><label>Network adapter 2</label></deviceInfo>
   <backing xsi:type="VirtualEthernetCardDistributedVirtualPortBackingInfo"><port><switchUuid>x</switchUuid><portgroupKey>dvportgroup-13</portgroupKey></port></backing><macAddress>00:50:56:aa:bb:02</macAddress></VirtualDevice>
 </val></propSet>
</objects>
<objects><obj type="VirtualMachine">vm-43</obj><propSet><name>name</name><val>tmpl</val></propSet><propSet><name>config.template</name><val>true</val></propSet></objects>
<token>next-page</token>`;

test('the inventory from RetrievePropertiesEx: tree, VMs with disks, NICs, snapshots; templates left out', () => {
  const page = parseRetrieveResult(
    parseReply(soap(`<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval>${vmProps}</returnval></RetrievePropertiesExResponse>`), 'RetrievePropertiesEx')
      .children[0],
  );
  assert.equal(page.token, 'next-page');
  const inv = buildInventory(page.objects);
  assert.deepEqual(
    inv.networks.map((n) => n.name),
    ['VM Network', 'PG & co'],
  );
  assert.deepEqual(inv.datacenters, [{ id: 'datacenter-2', name: 'DC0', path: 'DC0' }]);
  assert.deepEqual(inv.hosts, [{ id: 'host-9', name: 'esx1', cluster: 'domain-c7' }]);
  assert.equal(inv.vms.length, 1);
  const vm = inv.vms[0] as VsphereVm;
  assert.deepEqual(
    [vm.id, vm.name, vm.cpus, vm.coresPerSocket, vm.memoryMB, vm.firmware, vm.powerState, vm.host, vm.datacenter, vm.changeTrackingEnabled],
    ['vm-42', 'web 1', 4, 2, 2048, 'efi', 'poweredOn', 'host-9', 'DC0', false],
  );
  assert.deepEqual(vm.snapshots, ['s1', 's2']);
  assert.deepEqual(
    vm.disks.map((d) => [d.file, d.capacity, d.datastore]),
    [
      ['[ds1] web 1/web 1.vmdk', 1073741824, 'datastore-11'],
      // No datastore moref: found by the name in the path; capacity from KB.
      ['[ds1] shared/data.vmdk', 2097152, 'datastore-11'],
    ],
  );
  assert.deepEqual(vm.unsupported, ['Hard disk 2: shared disk']);
  assert.deepEqual(
    vm.nics.map((n) => [n.network, n.mac, n.model]),
    [
      ['network-7', '00:50:56:aa:bb:01', 'VirtualVmxnet3'],
      ['dvportgroup-13', '00:50:56:aa:bb:02', 'VirtualE1000e'],
    ],
  );
  assert.equal(vm.source, 'datastore-11');

  // A warm plan on it: warm refused, snapshots and CBT named; the maps by name match the VM's ids.
  const ready = { status: { conditions: [{ type: 'Ready', status: 'True' }] } };
  const plan = {
    metadata: { name: 'p' },
    spec: { targetNamespace: 't', warm: true, vms: [{ id: 'vm-42' }] },
  };
  const ctx = {
    inventory: inv,
    networkMap: { ...ready, spec: { map: [{ source: { name: 'VM Network' } }, { source: { id: 'dvportgroup-13' } }] } },
    storageMap: { ...ready, spec: { map: [{ source: { name: 'ds1' }, destination: { storageClass: 'local' } }] } },
    vmExists: () => false,
    classMaxBytes: () => undefined,
    mapReady: () => true,
  };
  const types = (c: { type: string; category: string }[]) => c.map((x) => `${x.type}/${x.category}`);
  const warm = planConcerns(plan, ctx).concerns;
  assert.deepEqual(types(warm).sort(), [
    'ChangeTrackingNotEnabled/Critical',
    'MigrationTypeNotValid/Critical',
    'TargetNameNotValid/Warn',
    'UnsupportedDevices/Warn',
    'VMHasSnapshots/Warn',
  ]);
  // With warm supported (the controller says so for vsphere): CBT still Critical, snapshots a warning.
  assert.deepEqual(types(planConcerns(plan, { ...ctx, warmSupported: true }).concerns).sort(), [
    'ChangeTrackingNotEnabled/Critical',
    'TargetNameNotValid/Warn',
    'UnsupportedDevices/Warn',
    'VMHasSnapshots/Warn',
  ]);
  const cold = planConcerns({ ...plan, spec: { ...plan.spec, warm: false } }, ctx).concerns;
  assert.deepEqual(types(cold).sort(), ['Ready/Required', 'TargetNameNotValid/Warn', 'UnsupportedDevices/Warn']);
  // An unmapped datastore or network is a concern.
  const unmapped = planConcerns(
    { ...plan, spec: { ...plan.spec, warm: false } },
    { ...ctx, networkMap: { ...ready, spec: { map: [{ source: { name: 'VM Network' } }] } }, storageMap: { ...ready, spec: { map: [] } } },
  ).concerns;
  assert.ok(unmapped.some((c) => c.type === 'VMNetworksNotMapped'));
  assert.ok(unmapped.some((c) => c.type === 'VMStorageNotMapped'));
});

test('a VMDK descriptor names its flat extent; sparse, several extents or paths are not followed', () => {
  const desc = (extents: string) => `# Disk DescriptorFile\nversion=1\nCID=fffffffe\ncreateType="vmfs"\n\n# Extent description\n${extents}\n`;
  assert.equal(flatExtent(desc('RW 262144 VMFS "disk1-flat.vmdk"')), 'disk1-flat.vmdk');
  assert.equal(flatExtent(desc('RW 262144 FLAT "disk1-flat.vmdk" 0')), 'disk1-flat.vmdk');
  assert.equal(flatExtent(desc('RW 262144 SPARSE "disk1-s001.vmdk"')), undefined);
  assert.equal(flatExtent(desc('RW 1 FLAT "a-flat.vmdk" 0\nRW 1 FLAT "b-flat.vmdk" 0')), undefined);
  assert.equal(flatExtent(desc('RW 1 FLAT "../other/x-flat.vmdk" 0')), undefined);
  assert.equal(flatExtent('KDMV\u0001binary'), undefined);
});

test('the Secret: user and password required; cacert and insecureSkipVerify read', () => {
  const b = (s: string) => Buffer.from(s).toString('base64');
  assert.deepEqual(parseSecret({ user: b('u'), password: b('p'), insecureSkipVerify: b('true') }), { user: 'u', password: 'p', insecureSkipVerify: true });
  assert.deepEqual(parseSecret({ user: b('u'), password: b('p'), cacert: b('PEM') }), { user: 'u', password: 'p', cacert: 'PEM', insecureSkipVerify: false });
  assert.throws(
    () => parseSecret({ user: b('u') }),
    (e: unknown) => e instanceof VsphereError && e.code === 'SecretNotValid',
  );
});

test('QueryChangedDiskAreas: a DiskChangeInfo page is read; areas outside it or not numbers are refused; areas merge', () => {
  const reply = (inner: string) =>
    parseReply(
      soap(`<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval>${inner}</returnval></QueryChangedDiskAreasResponse>`),
      'QueryChangedDiskAreas',
    );
  const page = reply(
    '<startOffset>0</startOffset><length>4194304</length><changedArea><start>0</start><length>65536</length></changedArea><changedArea><start>1048576</start><length>131072</length></changedArea>',
  );
  assert.deepEqual(parseDiskChangeInfo(page.children[0]), {
    startOffset: 0,
    length: 4194304,
    areas: [
      { start: 0, length: 65536 },
      { start: 1048576, length: 131072 },
    ],
  });
  // No change in the page: no areas, the page still says how far it went.
  assert.deepEqual(parseDiskChangeInfo(reply('<startOffset>4194304</startOffset><length>4194304</length>').children[0]).areas, []);
  for (const bad of [
    '<startOffset>0</startOffset><length>65536</length><changedArea><start>65536</start><length>512</length></changedArea>',
    '<startOffset>0</startOffset><length>x</length>',
    '<startOffset>0</startOffset><length>-1</length>',
  ])
    assert.throws(
      () => parseDiskChangeInfo(reply(bad).children[0]),
      (e: unknown) => e instanceof VsphereError && e.code === 'BadReply',
    );
  assert.deepEqual(
    mergeAreas([
      { start: 131072, length: 65536 },
      { start: 0, length: 65536 },
      { start: 65536, length: 65536 },
      { start: 500000, length: 0 },
      { start: 1048576, length: 10 },
    ]),
    [
      { start: 0, length: 196608 },
      { start: 1048576, length: 10 },
    ],
  );
});

test("a snapshot's disk changeIds; an HttpNfcLeaseInfo's device URLs with the * host replaced", () => {
  const devices = parseReply(
    soap(`<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachineSnapshot">snapshot-7</obj><propSet><name>config.hardware.device</name><val xsi:type="ArrayOfVirtualDevice">
<VirtualDevice xsi:type="VirtualIDEController"><key>200</key></VirtualDevice>
<VirtualDevice xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] vm/vm.vmdk</fileName><changeId>52 3c 0a 1f 9b 2e 44 7d-8f 31 aa 04 5e 6b 21 90/12</changeId></backing><capacityInBytes>17179869184</capacityInBytes></VirtualDevice>
<VirtualDevice xsi:type="VirtualDisk"><key>2001</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] vm/vm_1.vmdk</fileName></backing></VirtualDevice>
</val></propSet></objects></returnval></RetrievePropertiesExResponse>`),
    'RetrievePropertiesEx',
  );
  const props = parseRetrieveResult(devices.children[0]).objects[0].props;
  // The second disk has no changeId (CBT off for it): not listed.
  assert.deepEqual([...parseChangeIds(props.get('config.hardware.device'))], [[2000, '52 3c 0a 1f 9b 2e 44 7d-8f 31 aa 04 5e 6b 21 90/12']]);
  // The disk files (a warm round refuses a snapshot whose disk is a delta, not the inventory's file).
  assert.deepEqual(
    [...parseDiskFiles(props.get('config.hardware.device'))],
    [
      [2000, '[ds1] vm/vm.vmdk'],
      [2001, '[ds1] vm/vm_1.vmdk'],
    ],
  );

  const lease = parseReply(
    soap(`<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="HttpNfcLease">session[52b1]52f3</obj><propSet><name>info</name><val xsi:type="HttpNfcLeaseInfo">
<lease type="HttpNfcLease">session[52b1]52f3</lease><entity type="VirtualMachine">vm-42</entity>
<deviceUrl><key>/vm-42/VirtualLsiLogicController0:0</key><importKey>/vm/disk-0.vmdk</importKey><url>https://*/nfc/52a0-1c/disk-0.vmdk</url><sslThumbprint>AA:BB</sslThumbprint><disk>true</disk><targetId>disk-0.vmdk</targetId><datastoreKey>ds:///vmfs/volumes/1/</datastoreKey><fileSize>17179869184</fileSize></deviceUrl>
<deviceUrl><key>/vm-42/nvram</key><importKey>/vm/nvram</importKey><url>https://esx1.example.com/nfc/52a0-1c/nvram</url><disk>false</disk></deviceUrl>
<totalDiskCapacityInKB>16777216</totalDiskCapacityInKB><leaseTimeout>300</leaseTimeout></val></propSet></objects></returnval></RetrievePropertiesExResponse>`),
    'RetrievePropertiesEx',
  );
  const info = parseLeaseInfo(parseRetrieveResult(lease.children[0]).objects[0].props.get('info'), 'vcenter.example.com:443');
  assert.deepEqual(info, {
    devices: [
      {
        key: '/vm-42/VirtualLsiLogicController0:0',
        url: 'https://vcenter.example.com/nfc/52a0-1c/disk-0.vmdk',
        targetId: 'disk-0.vmdk',
        disk: true,
        sslThumbprint: 'AA:BB',
        fileSize: 17179869184,
      },
      { key: '/vm-42/nvram', url: 'https://esx1.example.com/nfc/52a0-1c/nvram', disk: false },
    ],
    totalDiskCapacityInKB: 16777216,
    leaseTimeout: 300,
  });
  assert.throws(
    () => parseLeaseInfo(undefined, 'h'),
    (e: unknown) => e instanceof VsphereError && e.code === 'BadReply',
  );
});
