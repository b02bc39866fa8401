/** startCompactor: compacts to the revision seen one interval earlier, never further. */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { startCompactor } from './compactor.ts';
import { SqliteStore } from './sqlite/sqlite-store.ts';

it('compacts to the revision of the previous round', async () => {
  const store = new SqliteStore(':memory:');
  const compactor = startCompactor(store, { intervalMs: 20, onError: (e) => assert.fail(e) });
  try {
    await store.create('/a', '1');
    const seen = await store.currentRevision();
    await new Promise((r) => setTimeout(r, 30));
    await store.update('/a', '2');
    const deadline = Date.now() + 2000;
    while ((await store.compactedRevision()) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const compacted = await store.compactedRevision();
    assert.ok(compacted >= seen, `compacted ${compacted}`);
    assert.ok(compacted <= (await store.currentRevision()));
  } finally {
    compactor.stop();
    await store.close();
  }
});
