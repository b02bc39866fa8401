/**
 * Warm migration through Forklift's API (docs/forklift.md, "Warm migration"): the host `openshift`
 * provider (empty url) in the source namespace, a NetworkMap and StorageMap, a Plan with `warm:
 * true` into another namespace, and its Migration, while the tiny guest writes numbered records
 * to a 64 MiB data claim. The server runs precopy rounds every 3 s; once the Migration reports 3
 * precopies the test sets `spec.cutover` to now, as a user would. Then: the Migration Succeeded
 * with Forklift's warm status, the target claims equal the source's (qemu-img compare) and hold
 * the last record the source wrote, and the target VM boots (two guest boots: about 40 s on an
 * idle host).
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { forklift } from '@vessel/api';
import type { KubeObject } from '@vessel/client';
import { TINY_SERIAL } from '@vessel/guest';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { forkliftIn, FORKLIFT_REFS, planSpec } from '../packages/controllers/forklift/testdata.ts';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { recordSlot, recordsWritten, recordText, recordWriter, serialLog, tinyVm } from './tiny-vm.ts';

const { DVS, MIGRATIONS, NAMESPACES: NS, NETMAPS, PLANS, PROVIDERS, PVCS: PVC, SECRETS, STORAGEMAPS, VMIS: VMI, VMS: VM } = FORKLIFT_REFS;
const SRC = 'wplan-src';
const DST = 'wplan-dst';
const NAME = 'busy';
type Obj = Record<string, unknown>;
type Cond = { type: string; status: string; message?: string };
type WarmStatus = { successes: number; failures: number; precopies?: { start: string; end?: string }[] };
type VmS = { name: string; phase: string; error?: unknown; warm?: WarmStatus; conditions?: Cond[]; pipeline: { name: string; phase: string }[] };

let v: Vessel;
let dir: string;
const since0 = performance.now();
const log = (what: string) => console.log(`# ${((performance.now() - since0) / 1000).toFixed(1)} s ${what}`);
const conds = (o: KubeObject): Cond[] => (o.status as { conditions?: Cond[] } | undefined)?.conditions ?? [];
const fk = forkliftIn(SRC);
const pathOf = async (ns: string, claim: string) =>
  String((await v.client.get(PVC, claim, { namespace: ns })).metadata?.annotations?.['vessel.io/volume-path']);

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' }, forkliftPrecopyIntervalMs: 3000 });
  dir = await mkdtemp(join(tmpdir(), 'vessel-wplan-'));
  await ensureTinyImage(v.client, () => undefined);
  for (const name of [SRC, DST]) await v.client.create(NS, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
});

after(async () => {
  if (!v) return;
  for (const name of [SRC, DST]) await v.client.delete(NS, name).catch(() => undefined);
  // The agent leaves running guests alive when it stops: their VMIs go first.
  for (const name of [SRC, DST])
    await eventually(
      `the VMIs of ${name} gone`,
      async () => ((await v.client.list(VMI, { namespace: name })).items.length === 0 ? true : undefined),
      120_000,
    ).catch(() => undefined);
  await v.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test(
  'a warm Plan from the host openshift provider: precopies while the guest writes, cutover at spec.cutover, every write on the target',
  { timeout: 2_400_000 },
  async () => {
    await v.client.create(
      PVC,
      {
        apiVersion: 'v1',
        kind: 'PersistentVolumeClaim',
        metadata: { name: `${NAME}-data`, namespace: SRC },
        spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '64Mi' } } },
      },
      { namespace: SRC },
    );
    const vm = tinyVm(NAME, { namespace: SRC, userData: recordWriter(), terminationGracePeriodSeconds: 2 }) as {
      spec: { template: { spec: { domain: { devices: { disks: Obj[] } }; volumes: Obj[] } } };
    };
    vm.spec.template.spec.domain.devices.disks.push({ name: 'data', disk: { bus: 'virtio' } });
    vm.spec.template.spec.volumes.push({ name: 'data', persistentVolumeClaim: { claimName: `${NAME}-data` } });
    await v.client.create(VM, vm as unknown as Obj, { namespace: SRC });
    await eventually('the guest writing', async () => (recordsWritten(await serialLog(v.dataDir, SRC, NAME)).length > 5 ? true : undefined), 900_000, 500);
    log('source guest writes');

    const provider = { source: { name: 'host', namespace: SRC }, destination: { name: 'host', namespace: SRC } };
    await v.client.create(PROVIDERS, fk('Provider', 'host', { type: 'openshift', url: '', secret: {} }), { namespace: SRC });
    await v.client.create(NETMAPS, fk('NetworkMap', 'net', { provider, map: [{ source: { type: 'pod' }, destination: { type: 'pod' } }] }), { namespace: SRC });
    const classes = ['local', 'shared'].map((name) => ({ source: { name }, destination: { storageClass: name } }));
    await v.client.create(STORAGEMAPS, fk('StorageMap', 'disks', { provider, map: classes }), { namespace: SRC });
    await v.client.create(
      PLANS,
      fk('Plan', 'warm', planSpec({ provider, targetNamespace: DST, maps: { namespace: SRC }, vms: [{ name: NAME, namespace: SRC }] }, { warm: true })),
      { namespace: SRC },
    );
    await eventually(
      'the plan Ready',
      async () => (conds(await v.client.get(PLANS, 'warm', { namespace: SRC })).some((c) => c.type === 'Ready' && c.status === 'True') ? true : undefined),
      120_000,
    ).catch(async (e: unknown) => {
      throw new Error(`${(e as Error).message}: ${JSON.stringify(conds(await v.client.get(PLANS, 'warm', { namespace: SRC })))}`);
    });
    const statusOf = async (m: string) => ((await v.client.get(MIGRATIONS, m, { namespace: SRC })).status as { vms?: VmS[] } | undefined)?.vms?.[0];
    const pskSecrets = async () => (await v.client.list(SECRETS, { namespace: DST, labelSelector: forklift.WARM_PSK_LABEL })).items;
    const targetObjects = async () =>
      [...(await v.client.list(DVS, { namespace: DST })).items, ...(await v.client.list(PVC, { namespace: DST })).items, ...(await pskSecrets())].map(
        (o) => `${o.kind}/${o.metadata?.name}`,
      );

    log('plan Ready');
    // A warm Migration cancelled while it copies: its exports end, and the target DataVolumes,
    // claims and PSK secrets it made go (as a cancelled cold VM's); the source runs on.
    await v.client.create(MIGRATIONS, fk('Migration', 'warm-0', { plan: { name: 'warm', namespace: SRC } }), { namespace: SRC });
    await eventually(
      'warm-0 copying',
      async () => ((await statusOf('warm-0'))?.pipeline.find((p) => p.name === 'DiskTransfer')?.phase === 'Running' ? true : undefined),
      600_000,
      250,
    );
    assert.ok((await targetObjects()).length > 0, 'the cancelled run had made its target volumes');
    await v.client.patch(MIGRATIONS, 'warm-0', { spec: { cancel: [{ name: NAME, namespace: SRC }] } }, { namespace: SRC });
    const canceled = await eventually(
      'warm-0 canceled',
      async () => ((await statusOf('warm-0'))?.phase === 'Completed' ? statusOf('warm-0') : undefined),
      300_000,
      250,
    );
    assert.ok(
      canceled.conditions?.some((c) => c.type === 'Canceled'),
      JSON.stringify(canceled),
    );
    await eventually("the cancelled run's volumes and secrets gone", async () => ((await targetObjects()).length === 0 ? true : undefined), 60_000, 250).catch(
      async (e: unknown) => {
        throw new Error(`${(e as Error).message}: ${JSON.stringify(await targetObjects())}`);
      },
    );
    assert.equal(((await v.client.get(VMI, NAME, { namespace: SRC })).status as { phase?: string } | undefined)?.phase, 'Running', 'the source runs on');
    log('warm-0 canceled: its target DataVolumes, claims and PSK secrets are gone');

    await v.client.create(MIGRATIONS, fk('Migration', 'warm-1', { plan: { name: 'warm', namespace: SRC } }), { namespace: SRC });
    const vmStatus = () => statusOf('warm-1');
    await eventually('3 precopies after the full copy', async () => ((await vmStatus())?.warm?.successes ?? 0) >= 4 || undefined, 900_000, 500).catch(
      async (e: unknown) => {
        throw new Error(`${(e as Error).message}: ${JSON.stringify(await vmStatus())}`);
      },
    );
    log(`precopies: ${JSON.stringify((await vmStatus())?.warm)}`);

    // The PSK is in a Secret per export (owned by its claim), never in an annotation a reader of the
    // claim or the VMI sees; the annotations name the Secret.
    const secrets = await pskSecrets();
    assert.equal(secrets.length, 2, 'one PSK secret per exported claim (root, data)');
    const annotations = JSON.stringify([
      ...(await v.client.list(PVC, { namespace: DST })).items.map((o) => o.metadata?.annotations),
      (await v.client.get(VMI, NAME, { namespace: SRC })).metadata?.annotations,
    ]);
    for (const sec of secrets) {
      const key = Buffer.from(String((sec.data as Record<string, string>).key), 'base64').toString('utf8');
      assert.match(key, /^[0-9a-f]{64}$/);
      assert.equal((sec as { type?: string }).type, forklift.WARM_PSK_SECRET_TYPE);
      assert.equal(sec.metadata?.ownerReferences?.[0]?.kind, 'PersistentVolumeClaim');
      assert.ok(!annotations.includes(key), `the key of ${sec.metadata?.name} is in an annotation`);
      assert.ok(annotations.includes(sec.metadata!.name!), `the annotations name ${sec.metadata?.name}`);
    }
    const cutoverAt = performance.now();
    await v.client.patch(MIGRATIONS, 'warm-1', { spec: { cutover: new Date().toISOString() } }, { namespace: SRC });
    const m = await eventually(
      'the migration completed',
      async () => {
        const o = await v.client.get(MIGRATIONS, 'warm-1', { namespace: SRC });
        return (o.status as { completed?: string } | undefined)?.completed ? o : undefined;
      },
      600_000,
      250,
    );
    const s = (m.status as { vms: VmS[] }).vms[0];
    log(
      `migration completed ${((performance.now() - cutoverAt) / 1000).toFixed(1)} s after spec.cutover; pipeline ${JSON.stringify(s.pipeline.map((p) => [p.name, p.phase]))}`,
    );
    assert.ok(
      conds(m).some((c) => c.type === 'Succeeded' && c.status === 'True'),
      JSON.stringify(s),
    );
    assert.ok(
      s.pipeline.every((p) => p.phase === 'Completed'),
      JSON.stringify(s.pipeline),
    );
    assert.ok((s.warm?.precopies?.length ?? 0) >= 5, `a full copy, 3 precopies and the cutover round: ${JSON.stringify(s.warm)}`);
    assert.deepEqual(
      (await pskSecrets()).map((o) => o.metadata?.name),
      [],
      'the PSK secrets go with the exports',
    );

    // The source is stopped; the target claims equal the source's and hold the last record written.
    await assert.rejects(v.client.get(VMI, NAME, { namespace: SRC }));
    const last = Math.max(...recordsWritten(await serialLog(v.dataDir, SRC, NAME)));
    for (const vol of ['root', 'data']) {
      const cmp = await run('qemu-img', ['compare', '-U', await pathOf(SRC, `${NAME}-${vol}`), await pathOf(DST, `${NAME}-${vol}`)]);
      assert.equal(cmp.code, 0, `${vol}: ${cmp.out} ${cmp.err}`);
    }
    const raw = join(dir, 'data.raw');
    const conv = await run('qemu-img', ['convert', '-U', '-O', 'raw', await pathOf(DST, `${NAME}-data`), raw]);
    assert.equal(conv.code, 0, conv.err);
    const bytes = await readFile(raw);
    assert.equal(recordSlot(bytes, last), recordText(last), `record ${last}`);
    log(`target holds record ${last}, the last the source wrote`);

    // targetPowerState unset: the target starts, and its guest comes up.
    await eventually(
      'the target guest ready',
      async () => ((await serialLog(v.dataDir, DST, NAME).catch(() => '')).includes(TINY_SERIAL.ready) ? true : undefined),
      900_000,
      1000,
    );
    log(`target guest ready, ${((performance.now() - cutoverAt) / 1000).toFixed(1)} s after spec.cutover`);
  },
);
