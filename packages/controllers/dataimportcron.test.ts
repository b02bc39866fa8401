/**
 * DataImportCron decisions over the in-memory client, with a fake digest poller: a new cron
 * imports at once; an unchanged digest does nothing; a changed one makes a new import; the
 * DataSource moves only when an import Succeeds; old imports go oldest first.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { refs } from '@vessel/api';
import { getCondition, updateStatus } from '@vessel/runtime';
import { ANN_LAST_USE_TIME, ANN_NEXT_CRON_TIME, CRON_LABEL, DataImportCronController, importName, oldImports } from './dataimportcron.ts';
import { pinnedImageUrl } from './dataimportcron-poll.ts';
import { InMemoryClient, settle, until } from './testing/harness.ts';

const { DATAIMPORTCRONS, DATASOURCES, DATAVOLUMES, EVENTS } = refs;
const NS = { namespace: 'default' };
const D1 = `sha256:${'a1'.repeat(32)}`;
const D2 = `sha256:${'b2'.repeat(32)}`;

const started = performance.now();
after(() => console.log(`# dataimportcron.test.ts: ${(performance.now() - started).toFixed(0)} ms`));

type Obj = Record<string, unknown>;

async function setup(spec: Obj = {}) {
  const c = new InMemoryClient();
  await c.namespaces('default');
  const digest = { value: D1, polls: 0, fail: undefined as string | undefined };
  const ctl = new DataImportCronController(c, process.env.DIC_LOG ? console.error : undefined, {
    poller: async () => {
      digest.polls++;
      if (digest.fail) throw new Error(digest.fail);
      return digest.value;
    },
  });
  await ctl.start();
  await c.create(
    DATAIMPORTCRONS,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataImportCron',
      metadata: { name: 'tiny-cron', namespace: 'default' },
      spec: {
        schedule: '0 0 1 1 *',
        managedDataSource: 'tiny',
        template: { spec: { source: { registry: { url: 'docker://127.0.0.1:5000/tiny:v1' } }, storage: { resources: { requests: { storage: '1Gi' } } } } },
        ...spec,
      },
    },
    NS,
  );
  return {
    c,
    digest,
    async [Symbol.asyncDispose]() {
      await ctl.stop();
      c.close();
    },
  };
}

const dvNames = async (c: InMemoryClient) => (await c.list(DATAVOLUMES, NS)).items.map((d) => d.metadata!.name!).sort();
const dsSource = async (c: InMemoryClient) => ((await c.get(DATASOURCES, 'tiny', NS)).spec as { source?: { pvc?: { name: string } } }).source?.pvc?.name;
const cron = async (c: InMemoryClient) => (await c.get(DATAIMPORTCRONS, 'tiny-cron', NS)) as Obj & { status?: Obj };
const succeed = (c: InMemoryClient, name: string, phase = 'Succeeded') =>
  updateStatus(c, DATAVOLUMES, 'default', name, (s) => {
    s.phase = phase;
    if (phase === 'Failed') s.conditions = [{ type: 'Running', status: 'False', reason: 'Error', message: 'registry said no' }];
  });
/** What CDI's tests do to poll now instead of at the next tick. */
const tick = (c: InMemoryClient) =>
  c.patch(DATAIMPORTCRONS, 'tiny-cron', { metadata: { annotations: { [ANN_NEXT_CRON_TIME]: new Date().toISOString() } } }, NS);

test('importName and pinnedImageUrl follow CDI', () => {
  assert.equal(importName('tiny', D1), 'tiny-a1a1a1a1a1a1');
  assert.equal(pinnedImageUrl('docker://127.0.0.1:5000/tiny:v1', D1), `docker://127.0.0.1:5000/tiny@${D1}`);
  assert.equal(pinnedImageUrl('docker://reg.example/a/b', D1), `docker://reg.example/a/b@${D1}`);
  assert.equal(pinnedImageUrl('docker://reg.example:5000/b', D1), `docker://reg.example:5000/b@${D1}`);
});

test('a new cron imports at once; the DataSource moves only on success; an unchanged digest does nothing', async () => {
  await using t = await setup();
  const { c } = t;
  const first = importName('tiny', D1);
  await until('first import', async () => (await dvNames(c)).includes(first));
  const dv = await c.get(DATAVOLUMES, first, NS);
  assert.equal(dv.metadata!.labels![CRON_LABEL], 'tiny-cron');
  assert.equal((dv.spec as { source: { registry: { url: string } } }).source.registry.url, `docker://127.0.0.1:5000/tiny@${D1}`);
  await until('DataSource created', async () => (await c.list(DATASOURCES, NS)).items.length === 1);
  assert.equal(await dsSource(c), undefined, 'no source before an import succeeded');
  const s0 = (await until('status', async () => (await cron(c)).status?.currentImports && (await cron(c)).status)) as Obj;
  assert.deepEqual(s0.currentImports, [{ DataVolumeName: first, Digest: D1 }]);

  await succeed(c, first);
  await until('DataSource points at the import', async () => (await dsSource(c)) === first);
  await until('UpToDate', async () => getCondition(await cron(c), 'UpToDate')?.status === 'True');
  const s1 = (await cron(c)).status!;
  assert.deepEqual(s1.lastImportedPVC, { namespace: 'default', name: first });
  assert.ok(s1.lastImportTimestamp && s1.lastExecutionTimestamp);

  const polls = t.digest.polls;
  await tick(c);
  await until('polled again', () => t.digest.polls > polls);
  await settle(100);
  assert.deepEqual(await dvNames(c), [first], 'same digest: no new import');
  const events = (await c.list(EVENTS, NS)).items.map((e) => (e as { reason?: string }).reason);
  assert.ok(events.includes('ImportStarted') && events.includes('ImportSucceeded'), events.join());
});

test('a changed digest makes a new import; the DataSource stays until it succeeds; importsToKeep 1 deletes the old one', async () => {
  await using t = await setup({ importsToKeep: 1 });
  const { c } = t;
  const first = importName('tiny', D1);
  const second = importName('tiny', D2);
  await until('first import', async () => (await dvNames(c)).includes(first));
  await succeed(c, first);
  await until('DataSource at first', async () => (await dsSource(c)) === first);

  t.digest.value = D2;
  await tick(c);
  await until('second import', async () => (await dvNames(c)).includes(second));
  await settle(50);
  assert.equal(await dsSource(c), first, 'the DataSource waits for the new import');
  assert.equal(getCondition(await cron(c), 'UpToDate')?.status, 'False');

  await succeed(c, second);
  await until('DataSource at second', async () => (await dsSource(c)) === second);
  await until('old import collected', async () => JSON.stringify(await dvNames(c)) === JSON.stringify([second]));
});

test('garbageCollect Never keeps every import; a failed import leaves the DataSource and is replaced by the next digest', async () => {
  await using t = await setup({ garbageCollect: 'Never', importsToKeep: 0 });
  const { c } = t;
  const first = importName('tiny', D1);
  await until('first import', async () => (await dvNames(c)).includes(first));
  await succeed(c, first);
  await until('DataSource at first', async () => (await dsSource(c)) === first);

  t.digest.value = D2;
  await tick(c);
  const second = importName('tiny', D2);
  await until('second import', async () => (await dvNames(c)).includes(second));
  await succeed(c, second, 'Failed');
  await until('ImportFailed event', async () => (await c.list(EVENTS, NS)).items.some((e) => (e as { reason?: string }).reason === 'ImportFailed'));
  assert.equal(await dsSource(c), first);

  const third = `sha256:${'c3'.repeat(32)}`;
  t.digest.value = third;
  await tick(c);
  await until('third import', async () => (await dvNames(c)).includes(importName('tiny', third)));
  await until('failed import deleted', async () => !(await dvNames(c)).includes(second));
  await succeed(c, importName('tiny', third));
  await until('DataSource at third', async () => (await dsSource(c)) === importName('tiny', third));
  assert.ok((await dvNames(c)).includes(first), 'Never: the first import stays');
});

test('a poll that fails records a Warning and imports nothing', async () => {
  await using t = await setup();
  t.digest.fail = 'registry 127.0.0.1:5000 has no image tiny:v1';
  const { c } = t;
  // The first poll may have run already: make the next one fail.
  await tick(c);
  await until('PollFailed', async () => (await c.list(EVENTS, NS)).items.some((e) => (e as { reason?: string }).reason === 'PollFailed'));
});

test('oldImports: newest kept by last-use time, never the one in use', () => {
  const dv = (name: string, at: string) => ({ metadata: { name, annotations: { [ANN_LAST_USE_TIME]: at } } }) as never;
  const list = [dv('a', '2026-01-01T00:00:00Z'), dv('c', '2026-01-03T00:00:00Z'), dv('b', '2026-01-02T00:00:00Z')];
  assert.deepEqual(oldImports(list, 1, 'c'), ['b', 'a']);
  assert.deepEqual(oldImports(list, 2, 'c'), ['a']);
  assert.deepEqual(oldImports(list, 0, 'c'), ['b', 'a']);
  assert.deepEqual(oldImports(list, 3, 'c'), []);
});

test('without a schedule a failing poll is retried a minute later, not on every event; a retrying import gives way to a new digest', async () => {
  await using t = await setup();
  const { c } = t;
  const first = importName('tiny', D1);
  await until('first import', async () => (await dvNames(c)).includes(first));
  // The agent retries a failing import: phase kept, restartCount counted, Running False.
  await updateStatus(c, DATAVOLUMES, 'default', first, (s) => {
    s.phase = 'ImportInProgress';
    s.restartCount = 2;
    s.conditions = [{ type: 'Running', status: 'False', reason: 'HttpError', message: 'registry answered HTTP 500' }];
  });
  t.digest.value = D2;
  await tick(c);
  await until('second import replaces the retrying one', async () => JSON.stringify(await dvNames(c)) === JSON.stringify([importName('tiny', D2)]));

  await using u = await setup({ schedule: '' });
  u.digest.fail = 'unreachable';
  await settle(300);
  assert.ok(u.digest.polls <= 2, `polled ${u.digest.polls} times`);
});
