// Snapshot chains with real qemu-img, qemu-io and a real QEMU (no guest: HMP qemu-io writes
// into the running disk): snapshots keep their content, restore and delete keep every other
// snapshot's, and a crash at each step of a snapshot is finished or undone.
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { QmpClient } from '../qmp/client.ts';
import { setFaultHook } from '../faults.ts';
import { compact, deleteSnapshot, recover, restoreVolume, snapshotFileFor, takeSnapshot, type LiveDisk } from './chain.ts';
import { backingFile, Pool } from './pools.ts';
import * as qemuImg from './qemu-img.ts';

let dir: string;
let pool: Pool;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-chain-'));
  pool = new Pool('local', dir, false);
  await pool.init();
  await pool.ensureNamespaceDir('ns');
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const MiB = 1 << 20;
let n = 0;
type SnapshotFault = 'link' | 'overlay' | 'switch';
/** takeSnapshot, stopped at `fault` as if the process died there. */
async function crashedSnapshot(vol: string, snapshot: string, live: LiveDisk | undefined, fault: SnapshotFault): Promise<void> {
  setFaultHook((p) => {
    if (p === `snapshot:${fault}`) throw new Error(`injected fault at ${p}`);
  });
  try {
    await assert.rejects(takeSnapshot(pool, vol, snapshot, live), /injected/);
  } finally {
    setFaultHook(undefined);
  }
}
async function volume(): Promise<string> {
  const path = pool.volumePath('ns', `disk${++n}`, `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`);
  await qemuImg.create(path, { format: 'qcow2', size: 16 * MiB });
  return path;
}
const snap = (vol: string, i: number) => snapshotFileFor(vol, `00000000-0000-4000-9000-${String(i).padStart(12, '0')}`);

/** Writes byte `value` over the first 64 KiB of an image that no QEMU has open. */
function write(path: string, value: number): void {
  const r = spawnSync('qemu-io', ['-f', 'qcow2', '-c', `write -P ${value} 0 64k`, path], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
}
/** The byte the first 64 KiB of the image hold, if they hold one value. */
function read(path: string): number | undefined {
  for (let v = 0; v < 256; v++) {
    const r = spawnSync('qemu-io', ['-r', '-U', '-f', 'qcow2', '-c', `read -P ${v} 0 64k`, path], { encoding: 'utf8' });
    if (r.status === 0 && !/verification failed/.test(r.stdout + r.stderr)) return v;
  }
  return undefined;
}

describe('offline', () => {
  test('snapshots keep their content; restore puts it back; deleting merges or waits', async () => {
    const vol = await volume();
    write(vol, 1);
    await takeSnapshot(pool, vol, snap(vol, 1));
    write(vol, 2);
    await takeSnapshot(pool, vol, snap(vol, 2));
    write(vol, 3);
    assert.deepEqual([read(snap(vol, 1)), read(snap(vol, 2)), read(vol)], [1, 2, 3]);
    assert.equal(await backingFile(vol), snap(vol, 2));
    await takeSnapshot(pool, vol, snap(vol, 2)); // again: already taken
    assert.equal(read(vol), 3);

    await restoreVolume(pool, vol, snap(vol, 1));
    assert.equal(read(vol), 1);
    assert.equal(await backingFile(vol), snap(vol, 1));
    // snap 1 now has two children (snap 2 and the volume): kept; snap 2 has none: gone.
    assert.equal(await deleteSnapshot(pool, snap(vol, 1)), 'kept');
    assert.equal(read(snap(vol, 1)), 1);
    assert.equal(await deleteSnapshot(pool, snap(vol, 2)), 'deleted');
    // With snap 2 gone, snap 1 has one child: the tombstone is merged into it.
    await compact(pool);
    assert.equal(await backingFile(vol), undefined);
    assert.equal(read(vol), 1);
    assert.deepEqual(
      (await readdir(join(dir, 'ns'))).filter((f) => f.startsWith('disk1')),
      ['disk1-00000000-0000-4000-8000-000000000001.qcow2'],
    );
  });

  test('a chain of 5: deleting the middle ones in random order keeps the others and the volume', async () => {
    const vol = await volume();
    for (let i = 1; i <= 5; i++) {
      write(vol, 10 + i);
      await takeSnapshot(pool, vol, snap(vol, i));
    }
    write(vol, 99);
    const order = [3, 2, 4].sort(() => Math.random() - 0.5);
    for (const i of order) assert.equal(await deleteSnapshot(pool, snap(vol, i)), 'deleted', `snapshot ${i} merged into its child`);
    assert.equal(read(snap(vol, 1)), 11);
    assert.equal(read(snap(vol, 5)), 15);
    assert.equal(read(vol), 99);
    assert.equal(await backingFile(snap(vol, 5)), snap(vol, 1));
    const check = spawnSync('qemu-img', ['check', '-f', 'qcow2', vol], { encoding: 'utf8' });
    assert.equal(check.status, 0, check.stdout + check.stderr);
    await restoreVolume(pool, vol, snap(vol, 5));
    assert.equal(read(vol), 15);
  });

  test('a crash at each step of a snapshot is undone (nothing written into the overlay)', async () => {
    for (const fault of ['link', 'overlay', 'switch'] as SnapshotFault[]) {
      const vol = await volume();
      write(vol, 7);
      await crashedSnapshot(vol, snap(vol, 1), undefined, fault);
      assert.equal(await recover(vol), 'back', fault);
      assert.equal(read(vol), 7);
      assert.equal(await backingFile(vol), undefined);
      assert.deepEqual(
        (await readdir(join(dir, 'ns'))).filter((f) => f.startsWith(`disk${n}-`)),
        [`disk${n}-00000000-0000-4000-8000-${String(n).padStart(12, '0')}.qcow2`],
        `${fault}: no leftovers`,
      );
      await takeSnapshot(pool, vol, snap(vol, 1));
      assert.equal(read(snap(vol, 1)), 7);
    }
  });

  test('a crash in the middle of a restore is undone, and the restore can run again', async () => {
    const vol = await volume();
    write(vol, 1);
    await takeSnapshot(pool, vol, snap(vol, 1));
    write(vol, 2);
    setFaultHook((p) => {
      if (p === 'restore:overlay') throw new Error('injected');
    });
    try {
      await assert.rejects(restoreVolume(pool, vol, snap(vol, 1)), /injected/);
    } finally {
      setFaultHook(undefined);
    }
    assert.equal(read(vol), 2, 'the volume is as it was');
    assert.equal(await recover(vol), 'back');
    await restoreVolume(pool, vol, snap(vol, 1));
    assert.equal(read(vol), 1);
    assert.ok(!(await readdir(join(dir, 'ns'))).some((f) => /pending|\.chain/.test(f)), 'no leftovers');
  });

  test('the base of linked clones is never snapshotted', async () => {
    const golden = await volume();
    const clone = `${golden}.clone.qcow2`;
    await qemuImg.create(clone, { format: 'qcow2', backingFile: golden, backingFormat: 'qcow2' });
    await assert.rejects(takeSnapshot(pool, golden, snap(golden, 1)), /base of linked clones/);
    await rm(clone);
  });
});

describe('live (a running QEMU)', () => {
  async function startQemu(vol: string): Promise<{ live: LiveDisk; io: (cmd: string) => Promise<string>; quit: () => Promise<void> }> {
    const sock = join(dir, `qmp-${n}.sock`);
    const child = spawn(
      'qemu-system-x86_64',
      [
        '-machine',
        'q35,accel=tcg',
        '-nodefaults',
        '-display',
        'none',
        '-S',
        '-m',
        '64',
        '-qmp',
        `unix:${sock},server=on,wait=off`,
        '-blockdev',
        `driver=file,filename=${vol},node-name=file-root`,
        '-blockdev',
        'driver=qcow2,file=file-root,node-name=disk-root',
        '-device',
        'virtio-blk-pci,drive=disk-root,id=ua-root',
      ],
      { stdio: 'ignore' },
    );
    const qmp = await QmpClient.connect(sock, { waitForSocket: true, timeoutMs: 30_000 });
    const io = (cmd: string) =>
      qmp.execute<string>('human-monitor-command', { 'command-line': `qemu-io -d /machine/peripheral/ua-root/virtio-backend "${cmd}"` });
    return {
      live: { qmp, device: 'ua-root' },
      io,
      quit: async () => {
        const exited = new Promise((r) => child.once('exit', r));
        await qmp.execute('quit').catch(() => undefined);
        await exited;
        await qmp.close();
      },
    };
  }

  test('an online snapshot freezes the disk while QEMU goes on writing to the new overlay', async () => {
    const vol = await volume();
    write(vol, 1);
    const q = await startQemu(vol);
    try {
      await takeSnapshot(pool, vol, snap(vol, 1), q.live);
      assert.equal(await backingFile(vol), snap(vol, 1));
      assert.doesNotMatch(await q.io('write -P 2 0 64k'), /error|fail/i);
      await takeSnapshot(pool, vol, snap(vol, 2), q.live);
      assert.doesNotMatch(await q.io('write -P 3 0 64k'), /error|fail/i);
      // The snapshot being deleted is the running disk's backing file: locked, so kept for later.
      assert.equal(await deleteSnapshot(pool, snap(vol, 2)), 'kept');
    } finally {
      await q.quit();
    }
    assert.deepEqual([read(snap(vol, 1)), read(snap(vol, 2)), read(vol)], [1, 2, 3]);
    assert.deepEqual(await compact(pool), [snap(vol, 2)], 'merged once QEMU let go');
    assert.equal(await backingFile(vol), snap(vol, 1));
    assert.equal(read(vol), 3);
  });

  test("while the VM runs on, another process can open each of its snapshots (a clone's QEMU)", async () => {
    const vol = await volume();
    const clone = (i: number) => join(dir, `clone-${n}-${i}.qcow2`);
    const q = await startQemu(vol);
    try {
      for (let i = 1; i <= 3; i++) {
        assert.doesNotMatch(await q.io(`write -P ${i} 0 64k`), /error|fail/i);
        await takeSnapshot(pool, vol, snap(vol, i), q.live);
        // A linked clone read without -U: it fails if the running QEMU still holds a write
        // lock on the file, as it did on every snapshot after the first when QEMU could not
        // reopen the former top read-only.
        await qemuImg.create(clone(i), { format: 'qcow2', backingFile: snap(vol, i), backingFormat: 'qcow2', unsafeBacking: true, size: 16 * MiB });
        for (let j = 1; j <= i; j++) {
          const r = spawnSync('qemu-io', ['-r', '-f', 'qcow2', '-c', `read -P ${j} 0 64k`, clone(j)], { encoding: 'utf8' });
          assert.equal(r.status === 0 && !/fail|lock/i.test(r.stdout + r.stderr), true, `snapshot ${j} after ${i}: ${r.stdout}${r.stderr}`);
        }
      }
    } finally {
      await q.quit();
    }
  });

  test('a crash after QEMU switched to the overlay is finished; before, undone', async () => {
    for (const fault of ['overlay', 'switch'] as SnapshotFault[]) {
      const vol = await volume();
      write(vol, 5);
      const q = await startQemu(vol);
      try {
        await crashedSnapshot(vol, snap(vol, 1), q.live, fault);
        assert.equal(await recover(vol, q.live), fault === 'switch' ? 'forward' : 'back');
        assert.doesNotMatch(await q.io('write -P 6 0 64k'), /error|fail/i);
      } finally {
        await q.quit();
      }
      assert.equal(read(vol), 6, `${fault}: the running disk's writes are in the volume`);
      if (fault === 'switch') assert.equal(read(snap(vol, 1)), 5);
      else assert.equal(await backingFile(vol), undefined);
    }
  });
});
