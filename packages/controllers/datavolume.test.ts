/**
 * DataVolume controller unit tests over the in-memory client (real Resources over SQLite
 * :memory:): sourceRef through a DataSource to a golden claim, the claim it makes, the phases
 * before an agent takes over, and one status write per reconcile.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { refs, storage } from '@vessel/api';
import { updateStatus, type KubeObject } from '@vessel/runtime';
import { DataVolumeController } from './datavolume.ts';
import { InMemoryClient, settle, until } from './testing/harness.ts';

const { DATASOURCES, DATAVOLUMES, PVCS } = refs;
type Obj = Record<string, unknown>;

async function setup() {
  const c = new InMemoryClient();
  await c.namespaces('default', 'images');
  const ctl = new DataVolumeController(c);
  await ctl.start();
  return {
    c,
    async [Symbol.asyncDispose]() {
      await ctl.stop();
      c.close();
    },
  };
}

const dataVolume = (name: string): KubeObject => ({
  apiVersion: 'cdi.kubevirt.io/v1beta1',
  kind: 'DataVolume',
  metadata: { name, namespace: 'default' },
  spec: { sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'images' }, storage: { resources: { requests: { storage: '1Gi' } } } },
});

const dvStatus = async (c: InMemoryClient, name: string) => ((await c.get(DATAVOLUMES, name, { namespace: 'default' })).status ?? {}) as Obj;
const condition = (s: Obj, type: string) => (s.conditions as { type: string; status: string; reason: string }[] | undefined)?.find((x) => x.type === type);
const dvStatusWrites = (c: InMemoryClient, name: string) => c.count((w) => w.resource === 'datavolumes/status' && w.name === `default/${name}`);

/** The golden image's claim, populated in pool `shared` and bound, as the agent leaves it. */
async function goldenClaim(c: InMemoryClient): Promise<void> {
  await c.create(
    PVCS,
    {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name: 'tiny', namespace: 'images', annotations: { [storage.VOLUME_PATH]: 'images/tiny.qcow2' } },
      spec: { accessModes: ['ReadWriteMany'], storageClassName: 'shared', resources: { requests: { storage: '2Gi' } } },
    },
    { namespace: 'images' },
  );
  await updateStatus(c, PVCS, 'images', 'tiny', (s) => {
    s.phase = 'Bound';
    s.capacity = { storage: '2Gi' };
  });
}

test('sourceRef: Pending while the DataSource is missing; then a linked clone claim in the source class, no smaller than the source', async () => {
  await using h = await setup();
  const { c } = h;
  await c.create(DATAVOLUMES, dataVolume('web-root'), { namespace: 'default' });
  const pending = await until('DataSourceNotFound', async () => {
    const s = await dvStatus(c, 'web-root');
    return condition(s, 'Bound')?.reason === 'DataSourceNotFound' ? s : undefined;
  });
  assert.equal(pending.phase, 'Pending');
  assert.equal(condition(pending, 'Ready')?.status, 'False');
  assert.equal((await c.list(PVCS, { namespace: 'default' })).items.length, 0, 'no claim before the source is known');

  await goldenClaim(c);
  await c.create(
    DATASOURCES,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataSource',
      metadata: { name: 'tiny', namespace: 'images' },
      spec: { source: { pvc: { name: 'tiny', namespace: 'images' } } },
    },
    { namespace: 'images' },
  );
  const claim = await until('the clone claim', async () => (await c.list(PVCS, { namespace: 'default' })).items[0]);
  const ann = claim.metadata!.annotations as Record<string, string>;
  assert.equal(ann[storage.POPULATED_FOR], 'web-root');
  assert.equal(ann[storage.CLONE_SOURCE], 'images/tiny');
  assert.equal(ann[storage.CLONE_TYPE], 'linked');
  const spec = claim.spec as { storageClassName?: string; accessModes?: string[]; resources: { requests: { storage: string } } };
  assert.equal(spec.storageClassName, 'shared', "a clone without a class stays in its source's pool");
  assert.deepEqual(spec.accessModes, ['ReadWriteMany']);
  assert.equal(spec.resources.requests.storage, '2Gi', 'asked 1Gi of a 2Gi source: the source size');
  const s = await until('Pending on the claim', async () => {
    const st = await dvStatus(c, 'web-root');
    return condition(st, 'Bound')?.reason === 'Pending' ? st : undefined;
  });
  assert.equal(s.claimName, 'web-root');
});

test('one status write per reconcile, none when nothing changed; a node choice moves it to CloneScheduled', async () => {
  await using h = await setup();
  const { c } = h;
  await goldenClaim(c);
  await c.create(
    DATASOURCES,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataSource',
      metadata: { name: 'tiny', namespace: 'images' },
      spec: { source: { pvc: { name: 'tiny', namespace: 'images' } } },
    },
    { namespace: 'images' },
  );
  await c.create(DATAVOLUMES, dataVolume('db-root'), { namespace: 'default' });
  await until('the claim made and the status written', async () => (await dvStatus(c, 'db-root')).claimName === 'db-root');
  await settle(100);
  // The claim's creation and the status naming it are one reconcile: one status write after it.
  const made = c.writes.findIndex((w) => w.verb === 'create' && w.resource === 'persistentvolumeclaims' && w.name === 'default/db-root');
  assert.ok(made >= 0);
  assert.equal(c.writes.slice(made).filter((w) => w.resource === 'datavolumes/status').length, 1);
  const before = dvStatusWrites(c, 'db-root');
  // An unrelated change of the DataVolume (a label) reconciles it again and writes nothing.
  await c.patch(DATAVOLUMES, 'db-root', { metadata: { labels: { touched: 'yes' } } }, { namespace: 'default' });
  await settle(100);
  assert.equal(dvStatusWrites(c, 'db-root'), before);

  await c.patch(PVCS, 'db-root', { metadata: { annotations: { [storage.SELECTED_NODE]: 'node-a' } } }, { namespace: 'default' });
  const s = await until('CloneScheduled', async () => {
    const st = await dvStatus(c, 'db-root');
    return st.phase === 'CloneScheduled' ? st : undefined;
  });
  assert.match(String(condition(s, 'Ready')?.reason), /CloneScheduled/);
  assert.equal(condition(s, 'Bound')?.status, 'True');
  assert.equal(dvStatusWrites(c, 'db-root'), before + 1);
});

test("a claim of the same name that is not the DataVolume's is never taken over", async () => {
  await using h = await setup();
  const { c } = h;
  await c.create(
    PVCS,
    {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name: 'data', namespace: 'default' },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
    },
    { namespace: 'default' },
  );
  await c.create(
    DATAVOLUMES,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name: 'data', namespace: 'default' },
      spec: { source: { blank: {} }, storage: { resources: { requests: { storage: '1Gi' } } } },
    },
    { namespace: 'default' },
  );
  const s = await until('ErrClaimNotValid', async () => {
    const st = await dvStatus(c, 'data');
    return condition(st, 'Bound')?.reason === 'ErrClaimNotValid' ? st : undefined;
  });
  assert.equal(s.phase, 'Pending');
  const claim = await c.get(PVCS, 'data', { namespace: 'default' });
  assert.equal((claim.metadata!.annotations as Record<string, string> | undefined)?.[storage.POPULATED_FOR], undefined);
});
