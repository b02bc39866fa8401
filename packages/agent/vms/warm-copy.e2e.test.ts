/**
 * The warm copy with real QEMU (TCG) and the tiny guest: the guest writes numbered records to a
 * raw data disk without pause; a full round into a qemu-nbd export (TLS-PSK, through the relays),
 * two incremental rounds that copy far less than the disk, the guest paused, the last round: the
 * target's bytes equal the source's and hold the last record the guest said it wrote.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ensureTinyGuest, TINY_SERIAL, type TinyGuest } from '@vessel/guest';
import { buildCloudInitIso } from '../qemu/cloudinit.ts';
import { QmpClient } from '../qmp/client.ts';
import { recordSlot, recordsWritten, recordText, recordWriter } from '../../../e2e/tiny-vm.ts';
import { copyRound, endTracking, exportTarget, tracking, WarmCopyError, type TargetExport } from './warm-copy.ts';

const MiB = 1024 * 1024;
const DISK = 64 * MiB;
let guest: TinyGuest;
let root: string;
let qemu: ChildProcess | undefined;
let qmp: QmpClient | undefined;
let target: TargetExport | undefined;

before(async () => {
  guest = await ensureTinyGuest();
  root = await mkdtemp(join(tmpdir(), 'vessel-warm-e2e-'));
});

after(async () => {
  await qmp?.close().catch(() => undefined);
  qemu?.kill('SIGKILL');
  await target?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

const since0 = performance.now();
const log = (what: string) => console.log(`# ${((performance.now() - since0) / 1000).toFixed(1)} s ${what}`);

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
}

const serial = () => readFile(join(root, 'serial.log'), 'utf8').catch(() => '');

async function until<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Waits until the guest has written `more` records after the last one seen now. */
async function moreWrites(more: number): Promise<void> {
  const from = Math.max(0, ...recordsWritten(await serial()));
  await until(`${more} more writes`, async () => (Math.max(0, ...recordsWritten(await serial())) >= from + more ? true : undefined));
}

const sha = async (path: string) =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

test('warm copy: full round, two incremental rounds, the last one paused; the target equals the source', { timeout: 240_000 }, async () => {
  const rootDisk = join(root, 'root.qcow2');
  const data = join(root, 'data.raw');
  const copy = join(root, 'copy.raw');
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', guest.disk, rootDisk]);
  sh('qemu-img', ['create', '-q', '-f', 'raw', data, String(DISK)]);
  sh('qemu-img', ['create', '-q', '-f', 'raw', copy, String(DISK)]);
  await buildCloudInitIso({
    kind: 'noCloud',
    userData: recordWriter({ serial: 'warmdata' }),
    metaData: { instanceId: 'warm', localHostname: 'warm' },
    dest: join(root, 'seed.iso'),
  });
  const qmpPath = join(root, 'qmp.sock');
  qemu = spawn(
    'qemu-system-x86_64',
    [
      ...['-machine', 'q35', '-accel', 'tcg', '-m', '256', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none'],
      ...['-blockdev', `driver=file,filename=${rootDisk},node-name=file-root`, '-blockdev', 'driver=qcow2,file=file-root,node-name=disk-root'],
      ...['-device', 'virtio-blk-pci,drive=disk-root'],
      ...['-blockdev', `driver=file,filename=${data},node-name=file-data`, '-blockdev', 'driver=raw,file=file-data,node-name=disk-data'],
      ...['-device', 'virtio-blk-pci,drive=disk-data,serial=warmdata'],
      ...['-drive', `file=${join(root, 'seed.iso')},format=raw,if=none,id=seed,readonly=on`, '-device', 'virtio-blk-pci,drive=seed'],
      ...['-kernel', guest.kernel, '-initrd', guest.initrd, '-append', guest.cmdline],
      ...['-serial', `file:${join(root, 'serial.log')}`, '-qmp', `unix:${qmpPath},server=on,wait=off`],
    ],
    { stdio: 'ignore' },
  );
  qmp = await QmpClient.connect(qmpPath, { timeoutMs: 10_000, waitForSocket: true });
  await until('the guest writing', async () => ((await serial()).match(/^VESSEL-WROTE \d+/m) ? true : undefined));
  assert.ok((await serial()).includes(TINY_SERIAL.ready));
  log('guest writes');

  target = await exportTarget({ path: copy, format: 'raw', host: '127.0.0.1' });
  assert.match(target.address, /^127\.0\.0\.1:\d+$/);
  assert.match(target.key, /^[0-9a-f]{64}$/);
  const round = (mode: 'full' | 'incremental') => copyRound(qmp!, { volume: 'data', mode, target: target!, runDir: root });

  // No change tracking yet: an incremental round is refused, the caller goes full.
  await assert.rejects(round('incremental'), (e: unknown) => e instanceof WarmCopyError && e.code === 'WarmNoBitmap');
  // A wrong key: the TLS handshake fails, QEMU and the guest go on.
  await assert.rejects(
    copyRound(qmp, { volume: 'data', mode: 'full', target: { ...target, key: '00'.repeat(32) }, runDir: root }),
    (e: unknown) => e instanceof WarmCopyError && e.code === 'WarmCopyFailed',
  );
  await moreWrites(1);

  let t = performance.now();
  const full = await round('full');
  log(`full round: ${full.total} bytes in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  assert.equal(full.total, DISK);
  assert.equal(full.done, DISK);
  assert.ok(await tracking(qmp, 'data'));

  const deltas: number[] = [];
  for (let i = 0; i < 2; i++) {
    await moreWrites(20);
    t = performance.now();
    const r = await round('incremental');
    log(`incremental round ${i + 1}: ${r.total} bytes in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    assert.ok(r.total > 0, 'the guest wrote since the last round');
    assert.ok(r.total <= 4 * MiB, `a round copies only the written clusters, not ${r.total} bytes`);
    assert.equal(r.done, r.total);
    deltas.push(r.total);
  }

  // Cutover: the guest paused (it writes nothing more), the last round.
  await moreWrites(5);
  await qmp.execute('stop');
  const last = Math.max(...recordsWritten(await serial()));
  t = performance.now();
  const final = await round('incremental');
  log(`last round (paused): ${final.total} bytes in ${((performance.now() - t) / 1000).toFixed(1)} s; last record ${last}`);
  assert.ok(final.total <= 4 * MiB);
  await endTracking(qmp, 'data');
  assert.equal(await tracking(qmp, 'data'), false);
  const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
  assert.ok(!nodes.some((n) => n['node-name'].startsWith('vslwarm-')), 'no NBD client node is left');
  await target.stop();
  target = undefined;

  assert.equal(await sha(copy), await sha(data), 'the target is the source disk');
  const bytes = await readFile(copy);
  assert.equal(recordSlot(bytes, last), recordText(last));
  log(`deltas ${deltas.join(', ')}, final ${final.total}`);
});
