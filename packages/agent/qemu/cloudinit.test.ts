/**
 * Cloud-init seed ISOs built for real with genisoimage and read back with isoinfo: the volume
 * label, the file names cloud-init looks for and their contents, for NoCloud and ConfigDrive.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildCloudInitIso, cloudInitFiles, cloudInitIsoOptions, CloudInitError } from './cloudinit.ts';

const haveTools = spawnSync('genisoimage', ['-version']).status === 0 && spawnSync('isoinfo', ['-version']).status === 0;

function isoinfo(args: string[]): string {
  const r = spawnSync('isoinfo', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`isoinfo ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}
const label = (iso: string): string | undefined => /^Volume id: (.*)$/m.exec(isoinfo(['-d', '-i', iso]))?.[1]?.trim();
/** Paths in the ISO by their Rock Ridge names (what Linux shows when it mounts it). */
const files = (iso: string): string[] => isoinfo(['-f', '-R', '-i', iso]).split('\n').filter(Boolean).sort();
const extract = (iso: string, path: string): string => isoinfo(['-R', '-x', path, '-i', iso]);

describe('cloud-init seed ISOs', { skip: haveTools ? false : 'genisoimage or isoinfo missing' }, () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vessel-cloudinit-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('NoCloud: label cidata, user-data, meta-data, network-config', async () => {
    const iso = join(dir, 'nocloud.iso');
    const userData = '#cloud-config\npassword: vessel\nchpasswd: { expire: False }\n';
    await buildCloudInitIso({
      kind: 'noCloud',
      userData,
      networkDataBase64: Buffer.from('version: 2\nethernets:\n  eth0: {dhcp4: true}\n').toString('base64'),
      metaData: { instanceId: 'vm1.default', localHostname: 'vm1' },
      dest: iso,
    });
    assert.equal(label(iso), 'cidata');
    assert.deepEqual(files(iso), ['/meta-data', '/network-config', '/user-data']);
    assert.equal(extract(iso, '/user-data'), userData);
    assert.equal(extract(iso, '/meta-data'), 'instance-id: "vm1.default"\nlocal-hostname: "vm1"\n');
    assert.equal(extract(iso, '/network-config'), 'version: 2\nethernets:\n  eth0: {dhcp4: true}\n');
    // Only the ISO is left: no temp file, no staging directory.
    assert.deepEqual(readdirSync(dir), ['nocloud.iso']);
  });

  test('ConfigDrive: label config-2, openstack/latest/*', async () => {
    const iso = join(dir, 'configdrive.iso');
    const script = '#!/bin/sh\necho hello > /dev/ttyS0\n';
    await buildCloudInitIso({
      kind: 'configDrive',
      userDataBase64: Buffer.from(script).toString('base64'),
      networkData: '{"links":[],"networks":[],"services":[]}',
      metaData: { instanceId: 'vm2.ns', localHostname: 'vm2', uuid: '5d307ca9-b3ef-428c-8861-06e72d69f223' },
      dest: iso,
    });
    assert.equal(label(iso), 'config-2');
    assert.deepEqual(files(iso), [
      '/openstack',
      '/openstack/latest',
      '/openstack/latest/meta_data.json',
      '/openstack/latest/network_data.json',
      '/openstack/latest/user_data',
    ]);
    assert.equal(extract(iso, '/openstack/latest/user_data'), script);
    assert.deepEqual(JSON.parse(extract(iso, '/openstack/latest/meta_data.json')), {
      uuid: '5d307ca9-b3ef-428c-8861-06e72d69f223',
      instance_id: 'vm2.ns',
      hostname: 'vm2',
      local_hostname: 'vm2',
    });
    assert.equal(extract(iso, '/openstack/latest/network_data.json'), '{"links":[],"networks":[],"services":[]}');
  });

  test('rebuilding replaces the ISO atomically; a failure leaves the old one', async () => {
    const iso = join(dir, 'again.iso');
    const meta = { instanceId: 'a.b', localHostname: 'a' };
    await buildCloudInitIso({ kind: 'noCloud', userData: 'one', metaData: meta, dest: iso });
    await buildCloudInitIso({ kind: 'noCloud', userData: 'two', metaData: meta, dest: iso });
    assert.equal(extract(iso, '/user-data'), 'two');
    await assert.rejects(
      buildCloudInitIso({ kind: 'noCloud', userData: 'three', metaData: meta, dest: join(dir, 'no-such-dir', 'x.iso') }),
      (e: unknown) => e instanceof CloudInitError && e.code === 'IOError',
    );
    assert.equal(extract(iso, '/user-data'), 'two');
    assert.ok(!existsSync(join(dir, 'no-such-dir')));
  });
});

test('input checks and the files of a seed', () => {
  assert.throws(
    () => cloudInitFiles({ kind: 'noCloud', userData: 'a', userDataBase64: 'YQ==', metaData: { instanceId: 'x', localHostname: 'x' } }),
    (e: unknown) => e instanceof CloudInitError && e.code === 'InvalidInput',
  );
  assert.throws(
    () => cloudInitFiles({ kind: 'noCloud', userDataBase64: 'not base64!', metaData: { instanceId: 'x', localHostname: 'x' } }),
    (e: unknown) => e instanceof CloudInitError && e.code === 'InvalidInput',
  );
  const f = cloudInitFiles({ kind: 'noCloud', metaData: { instanceId: 'x', localHostname: 'h: "q"' } });
  assert.deepEqual([...f.keys()], ['user-data', 'meta-data']);
  assert.equal(f.get('user-data')?.length, 0);
  assert.equal(f.get('meta-data')?.toString(), 'instance-id: "x"\nlocal-hostname: "h: \\"q\\""\n');
});

test('cloudInitIsoOptions fills what KubeVirt fills', () => {
  const vmi = {
    metadata: { name: 'vm1', namespace: 'prod' },
    spec: { hostname: 'web', domain: { devices: {}, firmware: { uuid: '5d307ca9-b3ef-428c-8861-06e72d69f223' } } },
  };
  const o = cloudInitIsoOptions({ vmi, volume: { name: 'ci', cloudInitNoCloud: { userData: 'u', networkDataBase64: 'bg==' } }, dest: '/x.iso' });
  assert.deepEqual(o, {
    kind: 'noCloud',
    userData: 'u',
    userDataBase64: undefined,
    networkData: undefined,
    networkDataBase64: 'bg==',
    metaData: { instanceId: 'vm1.prod', localHostname: 'web', uuid: '5d307ca9-b3ef-428c-8861-06e72d69f223' },
    dest: '/x.iso',
  });
  const s = cloudInitIsoOptions({
    vmi,
    volume: { name: 'ci', cloudInitConfigDrive: { secretRef: { name: 's' } } },
    secretData: { userData: 'from-secret' },
    dest: '/y.iso',
  });
  assert.equal(s.kind, 'configDrive');
  assert.equal(s.userData, 'from-secret');
  assert.throws(
    () => cloudInitIsoOptions({ vmi, volume: { name: 'ci', cloudInitNoCloud: { networkDataSecretRef: { name: 'n' } } }, dest: '/z.iso' }),
    (e: unknown) => e instanceof CloudInitError && e.code === 'InvalidInput',
  );
  assert.throws(() => cloudInitIsoOptions({ vmi, volume: { name: 'd', emptyDisk: { capacity: '1Gi' } }, dest: '/z.iso' }), CloudInitError);
});
