import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { runWorkers, WorkQueue } from './workqueue.ts';

describe('work queue', () => {
  it('dedupes queued keys and never runs one key twice at once', async () => {
    const q = new WorkQueue();
    const running = new Set<string>();
    const runs: string[] = [];
    let overlap = false;
    const workers = runWorkers(q, 4, async (key) => {
      if (running.has(key)) overlap = true;
      running.add(key);
      runs.push(key);
      await new Promise((r) => setTimeout(r, 20));
      running.delete(key);
    });
    q.add('a');
    q.add('a');
    q.add('b');
    await new Promise((r) => setTimeout(r, 5));
    q.add('a'); // while 'a' runs: runs once more afterwards
    q.add('a');
    await new Promise((r) => setTimeout(r, 80));
    q.shutdown();
    await workers;
    assert.equal(overlap, false);
    assert.deepEqual(runs.sort(), ['a', 'a', 'b']);
  });

  it('retries failures with growing delays, then forgets on success', async () => {
    const q = new WorkQueue({ baseDelayMs: 10 });
    const times: number[] = [];
    const start = Date.now();
    const workers = runWorkers(q, 1, async () => {
      times.push(Date.now() - start);
      if (times.length < 4) throw new Error('not yet');
    });
    q.add('k');
    while (times.length < 4 && Date.now() - start < 2000) await new Promise((r) => setTimeout(r, 5));
    q.shutdown();
    await workers;
    assert.equal(times.length, 4);
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    assert.ok(gaps[0] >= 9 && gaps[1] >= 19 && gaps[2] >= 39, `backoff gaps ${gaps}`);
  });
});
