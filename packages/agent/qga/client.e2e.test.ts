/**
 * The guest agent client against the tiny guest's real qemu-ga (QEMU TCG), through the run
 * directory's qga.sock as the process layer defines it: the agent comes up after boot, freezing
 * stops the guest's disk writes (its counter) until the thaw, and the guest's fsfreeze hook says
 * so on the serial console; a paused guest does not answer, and answers again once resumed.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ensureTinyGuest, tinyOverlay, tinyQemuArgv, type TinyGuest } from '@vessel/guest';
import { QmpClient } from '../qmp/client.ts';
import { launch, readSerialLog, serialLogSize, terminate, waitForSerial } from '../qemu/process.ts';
import { GUEST_AGENT_CHARDEV_ID, SERIAL_CHARDEV_ID } from '../qemu/argv.ts';
import { QgaClient, fsfreezeStatus, ping, withAgent } from './client.ts';

let guest: TinyGuest;
let root: string;
let runDir: string;
let qga: string;
let qmp: QmpClient | undefined;

const since0 = performance.now();
const log = (what: string) => console.log(`# ${((performance.now() - since0) / 1000).toFixed(1)} s ${what}`);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const counters = (text: string) => [...text.matchAll(/^VESSEL-COUNTER (\d+)/gm)].length;

before(async () => {
  guest = await ensureTinyGuest();
  root = await mkdtemp(join(tmpdir(), 'vessel-qga-'));
  runDir = join(root, 'vm');
  const disk = tinyOverlay(guest, join(root, 'root.qcow2'));
  const started = await launch({
    runDir,
    argv: tinyQemuArgv(guest, disk, [
      '-device',
      `isa-serial,chardev=${SERIAL_CHARDEV_ID}`,
      // The guest agent channel as qemu/argv.ts gives every VM.
      '-device',
      'virtio-serial-pci,id=virtio-serial0',
      '-device',
      `virtserialport,bus=virtio-serial0.0,chardev=${GUEST_AGENT_CHARDEV_ID},name=org.qemu.guest_agent.0`,
    ]),
    chardevs: [
      { id: SERIAL_CHARDEV_ID, role: 'serial-console' },
      { id: GUEST_AGENT_CHARDEV_ID, role: 'guest-agent' },
    ],
  });
  qga = started.files.qga;
  qmp = await QmpClient.connect(started.files.qmp, { timeoutMs: 10_000 });
});

after(async () => {
  await qmp?.close();
  if (runDir) await terminate(runDir, { graceMs: 2000 });
  if (root) await rm(root, { recursive: true, force: true });
});

test('the agent answers once the guest has booted', { timeout: 180_000 }, async () => {
  await waitForSerial(runDir, 'VESSEL-GUEST-READY', 120_000);
  log('guest ready');
  const t0 = Date.now();
  while (!(await ping(qga))) {
    assert.ok(Date.now() - t0 < 60_000, 'the guest agent answers within 60 s of READY');
    await sleep(500);
  }
  log(`agent answers ${((Date.now() - t0) / 1000).toFixed(1)} s after READY`);
  assert.equal(await fsfreezeStatus(qga), 'thawed');
});

test("freeze holds the guest's disk writes until the thaw; the guest's hook sees both", { timeout: 120_000 }, async () => {
  const offset = await serialLogSize(runDir);
  // One connection for the lot, as a snapshot does.
  await withAgent(qga, async (c: QgaClient) => {
    assert.ok((await c.fsfreezeFreeze()) >= 1, 'the root filesystem froze');
    assert.equal(await c.fsfreezeStatus(), 'frozen');
    const frozen = await waitForSerial(runDir, /^VESSEL-FSFREEZE freeze/m, 30_000, { since: offset });
    await sleep(3000);
    const during = (await readSerialLog(runDir)).slice(frozen.offset);
    // The counter writes and syncs its file, then prints: at most one write got through before the freeze.
    assert.ok(counters(during) <= 1, `the counter stopped while frozen: ${JSON.stringify(during)}`);
    await c.ping(); // the agent itself still answers
    assert.ok((await c.fsfreezeThaw()) >= 1, 'thawed what froze');
    assert.equal(await c.fsfreezeStatus(), 'thawed');
  });
  const thawed = await waitForSerial(runDir, /^VESSEL-FSFREEZE thaw/m, 30_000, { since: offset });
  await waitForSerial(runDir, /^VESSEL-COUNTER \d+/m, 30_000, { since: thawed.offset });
  log('frozen, thawed, counting again');
});

test('a paused guest does not answer: ping gives up within its limit, and answers after resume', { timeout: 60_000 }, async () => {
  await qmp!.execute('stop');
  try {
    const t0 = Date.now();
    assert.equal(await ping(qga), false);
    assert.ok(Date.now() - t0 < 5000, `ping gave up after ${Date.now() - t0} ms`);
  } finally {
    await qmp!.execute('cont');
  }
  const t1 = Date.now();
  while (!(await ping(qga))) {
    assert.ok(Date.now() - t1 < 30_000, 'the agent answers again after resume');
    await sleep(200);
  }
  // The stale sync the paused guest got is dropped by the next connection's sync.
  assert.equal(await fsfreezeStatus(qga), 'thawed');
});
