/**
 * The agent's side of guest conversion: the libvirt XML virt-v2v reads, its machine-readable
 * output, and the controller over the in-memory API with a stand-in for virt-v2v-in-place (a
 * shell script printing virt-v2v's JSON lines): the answer on the claim, virt-v2v's reason on
 * failure, a claim pointing outside its namespace, a node without virt-v2v, a disk in use.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { forklift, refs, storage } from '@vessel/api';
import { InMemoryClient } from '@vessel/apiserver/testing';
import { ConversionController, domainXml, failureReason, parseLine, stageIndex, STAGES, usesAny } from './convert.ts';
import { Pool } from './pools.ts';

const { PVCS, VMIS } = refs;

test('domainXml: the disks as qcow2 files in boot order, firmware, memory, CPUs; names escaped', () => {
  const x = domainXml({ name: "a<b>&'c", firmware: 'efi', memoryMB: 2048, cpus: 2 }, ['/p/ns/d0.qcow2', "/p/ns/it's.qcow2"]);
  assert.match(x, /<name>a&#60;b&#62;&#38;&#39;c<\/name>/);
  assert.match(x, /<memory unit='MiB'>2048<\/memory>/);
  assert.match(x, /<vcpu>2<\/vcpu>/);
  assert.match(x, /<os firmware='efi'>/);
  assert.match(x, /source file='\/p\/ns\/d0.qcow2'\/><target dev='sda'/);
  assert.match(x, /source file='\/p\/ns\/it&#39;s.qcow2'\/><target dev='sdb'/);
  assert.doesNotMatch(domainXml({ name: 'x', firmware: 'bios', memoryMB: 1, cpus: 1 }, ['/f']), /firmware=/);
});

test('parseLine, stageIndex, failureReason: virt-v2v --machine-readable output', () => {
  assert.deepEqual(parseLine('{ "message": "Opening the source", "timestamp": "t", "type": "message" }'), { type: 'message', message: 'Opening the source' });
  assert.equal(parseLine('[   1.0] Opening the source'), undefined);
  assert.equal(parseLine('{ broken'), undefined);
  assert.equal(stageIndex('Setting up the source: -i libvirtxml /x'), 0);
  assert.equal(stageIndex('Converting Debian GNU/Linux 12 (bookworm) to run on KVM'), 4);
  assert.equal(stageIndex('something else'), -1);
  assert.equal(
    failureReason(['virt-v2v-in-place: error: inspection could not detect the source guest (or physical machine).'], '', 1),
    'inspection could not detect the source guest (or physical machine).',
  );
  assert.equal(
    failureReason(
      [],
      'virt-v2v-in-place: error: nbdkit is not installed\n\nIf reporting bugs, run virt-v2v-in-place with debugging enabled\n  virt-v2v-in-place -v -x [...]\n',
      1,
    ),
    'virt-v2v-in-place: error: nbdkit is not installed',
  );
  assert.equal(failureReason([], '', 3), 'virt-v2v-in-place exited with 3');
});

test('usesAny: a VMI naming a claim directly or through its DataVolume', () => {
  const vmi = {
    metadata: { name: 'v' },
    spec: {
      volumes: [
        { name: 'a', dataVolume: { name: 'x-disk0' } },
        { name: 'b', persistentVolumeClaim: { claimName: 'y' } },
      ],
    },
  };
  assert.equal(usesAny(vmi, ['x-disk0']), true);
  assert.equal(usesAny(vmi, ['y']), true);
  assert.equal(usesAny(vmi, ['z']), false);
});

const line = (type: string, message: string) => JSON.stringify({ message, timestamp: 't', type });

test('ConversionController: runs virt-v2v-in-place on the claims volumes and answers on the claim', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'vessel-convert-'));
  const client = new InMemoryClient();
  const pool = new Pool('local', join(root, 'pool'), false);
  await pool.init();
  await pool.ensureNamespaceDir('ns');
  await mkdir(join(root, 'pool', 'other'), { recursive: true });
  const seen = join(root, 'seen.xml');
  // The stand-in: keeps the domain XML it was given, prints the stages, fails when the VM's name says so.
  const fake = join(root, 'virt-v2v-in-place');
  await writeFile(
    fake,
    `#!/bin/sh
cp "$3" ${seen}
${STAGES.map((s) => `echo '${line('message', s)}'`).join('\n')}
echo '${line('warning', 'virt-v2v: warning: no virtio drivers were found for the guest')}'
if grep -q '<name>bad' "$3"; then echo '${line('error', 'virt-v2v-in-place: error: inspection could not detect the source guest (or physical machine).')}'; exit 1; fi
exit 0
`,
  );
  await chmod(fake, 0o755);
  const claim = async (name: string, path: string, node = 'n1') =>
    client.create(
      PVCS,
      {
        apiVersion: 'v1',
        kind: 'PersistentVolumeClaim',
        metadata: { name, namespace: 'ns', annotations: { [storage.SELECTED_NODE]: node, [storage.VOLUME_PATH]: path } },
        spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Mi' } } },
      },
      { namespace: 'ns' },
    );
  await client.create(refs.NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ns' } });
  for (const f of ['a0', 'a1', 'b0']) await writeFile(join(root, 'pool', 'ns', `${f}.qcow2`), '');
  await claim('a-disk0', join(root, 'pool', 'ns', 'a0.qcow2'));
  await claim('a-disk1', join(root, 'pool', 'ns', 'a1.qcow2'));
  await claim('b-disk0', join(root, 'pool', 'ns', 'b0.qcow2'));
  await claim('c-disk0', join(root, 'pool', 'other', 'x.qcow2'));
  await claim('d-disk0', join(root, 'pool', 'ns', 'd0.qcow2'));
  const ctl = new ConversionController(client, { nodeName: 'n1', pools: new Map([['local', pool]]), version: '2.2.0', command: fake });
  const off = new ConversionController(client, { nodeName: 'n2', pools: new Map([['local', pool]]), version: undefined, command: fake });
  await ctl.start();
  await off.start();
  t.after(async () => {
    await ctl.stop();
    await off.stop();
    await rm(root, { recursive: true, force: true });
  });
  const ask = (name: string, req: Partial<forklift.ConversionRequest>) =>
    client.patch(
      PVCS,
      name,
      {
        metadata: {
          annotations: {
            [forklift.CONVERT_REQUEST]: JSON.stringify({ id: `m/${name}`, claims: [name], firmware: 'bios', name, memoryMB: 256, cpus: 1, ...req }),
          },
        },
      },
      { namespace: 'ns' },
    );
  const answer = async (name: string): Promise<forklift.ConversionStatus> => {
    for (let i = 0; i < 500; i++) {
      const pvc = await client.get(PVCS, name, { namespace: 'ns' });
      const s = pvc.metadata?.annotations?.[forklift.CONVERSION_STATUS];
      const st = s ? (JSON.parse(s) as forklift.ConversionStatus) : undefined;
      if (st && st.phase !== 'Running') return st;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`no answer on ${name}`);
  };

  await ask('a-disk0', { claims: ['a-disk0', 'a-disk1'], name: 'good', firmware: 'efi' });
  const ok = await answer('a-disk0');
  assert.equal(ok.phase, 'Succeeded', JSON.stringify(ok));
  assert.equal(ok.id, 'm/a-disk0');
  assert.deepEqual(ok.stages, { completed: STAGES.length, total: STAGES.length });
  assert.deepEqual(ok.warnings, ['virt-v2v: warning: no virtio drivers were found for the guest']);
  const xml = await readFile(seen, 'utf8');
  assert.match(xml, new RegExp(`${join(root, 'pool', 'ns', 'a0.qcow2')}'/><target dev='sda'`));
  assert.match(xml, new RegExp(`${join(root, 'pool', 'ns', 'a1.qcow2')}'/><target dev='sdb'`));

  await ask('b-disk0', { name: 'bad' });
  const bad = await answer('b-disk0');
  assert.equal(bad.phase, 'Failed');
  assert.equal(bad.message, 'ConversionFailed: inspection could not detect the source guest (or physical machine).');

  await ask('c-disk0', {});
  assert.match((await answer('c-disk0')).message ?? '', /^PathOutsideNamespace: /);

  await client.create(
    VMIS,
    {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstance',
      metadata: { name: 'd', namespace: 'ns' },
      spec: { domain: { devices: {}, resources: { requests: { memory: '64Mi' } } }, volumes: [{ name: 'r', dataVolume: { name: 'd-disk0' } }] },
    },
    { namespace: 'ns' },
  );
  await ask('d-disk0', {});
  assert.equal((await answer('d-disk0')).message, 'InUse: VirtualMachineInstance d uses the disks');

  // Another node's claim is not this agent's; the node without virt-v2v says so.
  await claim('e-disk0', join(root, 'pool', 'ns', 'e0.qcow2'), 'n2');
  await ask('e-disk0', {});
  assert.equal((await answer('e-disk0')).message, 'NotInstalled: virt-v2v is not installed on node n2');

  // The same request is answered once: the answer stays.
  const before = (await client.get(PVCS, 'a-disk0', { namespace: 'ns' })).metadata?.annotations?.[forklift.CONVERSION_STATUS];
  await client.patch(PVCS, 'a-disk0', { metadata: { labels: { touched: 'yes' } } }, { namespace: 'ns' });
  await new Promise((r) => setTimeout(r, 100));
  assert.equal((await client.get(PVCS, 'a-disk0', { namespace: 'ns' })).metadata?.annotations?.[forklift.CONVERSION_STATUS], before);
});
