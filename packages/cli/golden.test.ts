/**
 * ensureTinyCron over the in-memory client and the real DataImportCron controller with a fake
 * poller (a stand-in agent marks imports Succeeded): the first call imports, the next finds
 * the same digest and imports nothing, a rebuilt guest (new digest) is imported at once, and a
 * registry that moved to another port replaces the cron without importing again.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { refs } from '@vessel/api';
import { updateStatus } from '@vessel/runtime';
import { DataImportCronController } from '../controllers/dataimportcron.ts';
import { InMemoryClient } from '../controllers/testing/harness.ts';
import { ensureTinyCron } from './golden.ts';

const { DATAIMPORTCRONS, DATASOURCES, DATAVOLUMES } = refs;
const at = { namespace: 'vessel-images' };
const D1 = `sha256:${'a1'.repeat(32)}`;
const D2 = `sha256:${'b2'.repeat(32)}`;

test('vessel up makes vessel-images/tiny through its DataImportCron; again, nothing new is imported', async () => {
  const c = new InMemoryClient();
  await c.namespaces('vessel-images');
  const digest = { value: D1, polls: 0 };
  const ctl = new DataImportCronController(c, undefined, {
    poller: async () => {
      digest.polls++;
      return digest.value;
    },
  });
  await ctl.start();
  // The agent's part: every import Succeeds a moment after it appears.
  const agent = setInterval(() => {
    void c.list(DATAVOLUMES, at).then(async (l) => {
      for (const dv of l.items) {
        if ((dv.status as { phase?: string } | undefined)?.phase !== 'Succeeded')
          await updateStatus(c, DATAVOLUMES, 'vessel-images', dv.metadata!.name!, (s) => {
            s.phase = 'Succeeded';
          }).catch(() => undefined);
      }
    });
  }, 20);
  const lines: string[] = [];
  const note = (l: string) => lines.push(l);
  const dvs = async () => (await c.list(DATAVOLUMES, at)).items.map((d) => d.metadata!.name!).sort();
  try {
    const url = 'docker://127.0.0.1:5000/vessel/tiny:latest';
    const first = await ensureTinyCron(c, note, url, { timeoutMs: 10_000 });
    assert.deepEqual(first, { result: 'imported', pvc: 'tiny-a1a1a1a1a1a1', digest: D1 });
    const ds = await c.get(DATASOURCES, 'tiny', at);
    assert.equal(ds.metadata!.labels!['cdi.kubevirt.io/dataImportCron'], 'tiny');
    assert.equal(ds.metadata!.labels!['vessel.io/golden-image'], 'true');
    const cron = await c.get(DATAIMPORTCRONS, 'tiny', at);
    assert.equal((cron.spec as { schedule?: string }).schedule, '@daily');

    const polls = digest.polls;
    const again = await ensureTinyCron(c, note, url, { timeoutMs: 10_000 });
    assert.equal(again.result, 'exists');
    assert.ok(digest.polls > polls, 'polled again');
    assert.deepEqual(await dvs(), ['tiny-a1a1a1a1a1a1']);

    digest.value = D2; // a rebuilt guest
    const rebuilt = await ensureTinyCron(c, note, url, { timeoutMs: 10_000 });
    assert.deepEqual(rebuilt, { result: 'imported', pvc: 'tiny-b2b2b2b2b2b2', digest: D2 });

    // The registry could not get its port back: the cron is replaced and adopts the import of the same digest.
    const moved = await ensureTinyCron(c, note, 'docker://127.0.0.1:5001/vessel/tiny:latest', { timeoutMs: 10_000 });
    assert.deepEqual(moved, { result: 'exists', pvc: 'tiny-b2b2b2b2b2b2', digest: D2 });
    assert.deepEqual(await dvs(), ['tiny-a1a1a1a1a1a1', 'tiny-b2b2b2b2b2b2']);
    assert.ok(
      lines.some((l) => /moved to docker:\/\/127\.0\.0\.1:5001/.test(l)),
      lines.join('\n'),
    );
  } finally {
    clearInterval(agent);
    await ctl.stop();
    c.close();
  }
});
