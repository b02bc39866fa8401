/**
 * A source QEMU whose NBD connection to the target never ends (vms/block-migration.ts,
 * `NBD_OPEN_TIMEOUT_S`): QEMU holds its main loop during blockdev-add, so a target that accepts
 * and then says nothing would freeze the guest for good. Here the target is a TCP server of the
 * test on loopback that accepts and stays silent; QEMU's open timer ends the wait, the mirror
 * fails with QEMU's reason and QEMU answers again.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { blockNodeNames } from '../qemu/argv.ts';
import { QmpClient } from '../qmp/client.ts';
import * as qemuImg from '../storage/qemu-img.ts';
import { NBD_OPEN_TIMEOUT_S, startMirrors } from './block-migration.ts';

test('an NBD target that accepts and never answers: the connection gives up and QEMU answers again', { timeout: 120_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vessel-nbd-guard-'));
  const held: Socket[] = [];
  const silent = createServer((s) => {
    held.push(s);
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  const port = (silent.address() as { port: number }).port;
  const names = blockNodeNames('data');
  const disk = join(dir, 'data.qcow2');
  await qemuImg.create(disk, { format: 'qcow2', size: 16 * 1024 * 1024 });
  const qmpPath = join(dir, 'qmp.sock');
  const qemu = spawn(
    'qemu-system-x86_64',
    [
      ...['-machine', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${qmpPath},server=on,wait=off`],
      ...['-blockdev', `driver=file,filename=${disk},node-name=${names.file}`, '-blockdev', `driver=qcow2,file=${names.file},node-name=${names.format}`],
    ],
    { stdio: 'ignore' },
  );
  let qmp: QmpClient | undefined;
  try {
    for (let i = 0; !qmp; i++) {
      qmp = await QmpClient.connect(qmpPath, { timeoutMs: 10_000 }).catch((e: unknown) => {
        if (i > 100) throw e;
        return new Promise<undefined>((r) => setTimeout(() => r(undefined), 100));
      });
    }
    const t0 = Date.now();
    const failure = await startMirrors(qmp, [{ volume: 'data', kind: 'claim', claim: 'data', sync: 'full' }], `127.0.0.1:${port}`).then(
      () => undefined,
      (e: unknown) => (e instanceof Error ? e.message : String(e)),
    );
    const took = Date.now() - t0;
    assert.ok(held.length >= 1, 'QEMU connected to the silent target');
    assert.ok(failure, 'the mirror did not start');
    assert.ok(took >= NBD_OPEN_TIMEOUT_S * 1000 - 500, `it gave up after ${took} ms, before the open timeout`);
    assert.ok(took < NBD_OPEN_TIMEOUT_S * 1000 * 3, `QEMU was held ${took} ms`);
    // QEMU's main loop is free again: it answers at once, and no NBD client of ours is left.
    const status = await qmp.execute<{ status: string }>('query-status', undefined, { timeoutMs: 2_000 });
    assert.equal(status.status, 'running');
    const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
    assert.deepEqual(
      nodes.map((n) => n['node-name']).filter((n) => n.startsWith('vslmig-')),
      [],
    );
    console.log(`# blockdev-add to a silent target: ended after ${took} ms; QEMU said: ${failure}`);
  } finally {
    await qmp?.close().catch(() => undefined);
    qemu.kill('SIGKILL');
    for (const s of held) s.destroy();
    silent.close();
    await rm(dir, { recursive: true, force: true });
  }
});
