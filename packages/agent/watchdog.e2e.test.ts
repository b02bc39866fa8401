/**
 * The watchdog process for real (watchdog.ts): real QEMUs (paused, no guest) in run directories
 * laid out as the agent's, the detached watchdog process the agent starts, and what a user of
 * HA counts on: QEMUs killed once the agent stops petting, a restarted agent reusing the running
 * watchdog and keeping its VMs, nothing killed unarmed (no peers) or after a disarm.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { launch, probe, terminate } from './qemu/process.ts';
import { Watchdog } from './watchdog.ts';

const dirs: string[] = [];
const runDirs: string[] = [];
after(async () => {
  for (const d of runDirs) await terminate(d, { graceMs: 500 });
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function node(): Promise<{ dataDir: string; vmsRoot: string; qemu: string }> {
  const dataDir = await mkdtemp(join(tmpdir(), 'vessel-watchdog-'));
  dirs.push(dataDir);
  const vmsRoot = join(dataDir, 'vms');
  const qemu = join(vmsRoot, 'default', 'uid-1');
  runDirs.push(qemu);
  await launch({ runDir: qemu, argv: ['-machine', 'q35', '-accel', 'tcg', '-m', '64', '-nodefaults', '-no-user-config', '-display', 'none', '-S'] });
  return { dataDir, vmsRoot, qemu };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pidOf = async (w: Watchdog) => Number((await readFile(join(w.dir, 'pid'), 'utf8')).trim());
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
async function until(what: string, ok: () => Promise<boolean> | boolean, ms: number): Promise<number> {
  const t0 = Date.now();
  while (!(await ok())) {
    if (Date.now() - t0 > ms) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(100);
  }
  return Date.now() - t0;
}

test('kills the QEMUs once the agent stops petting; a restarted agent in time keeps them', { timeout: 60_000 }, async () => {
  const { dataDir, vmsRoot, qemu } = await node();
  const agent1 = new Watchdog(dataDir, vmsRoot);
  await agent1.start({ timeoutMs: 3000, armed: true });
  const pid = await pidOf(agent1);
  await until('the watchdog runs', () => agent1.running(), 10_000);
  // Pets for longer than the timeout: nothing happens.
  for (let i = 0; i < 10; i++) {
    await agent1.pet();
    await sleep(500);
  }
  assert.ok(await probe(qemu), 'the QEMU runs while the agent pets');
  // The agent "restarts": a new one reuses the running watchdog and its terms.
  await sleep(1500);
  const agent2 = new Watchdog(dataDir, vmsRoot);
  await agent2.start({ timeoutMs: 60_000, armed: false });
  assert.equal(await pidOf(agent2), pid, 'no second watchdog');
  assert.ok(await probe(qemu), 'the QEMU survives a restart within the timeout');
  // Then it dies: the watchdog fires within its timeout (3 s, the terms the first agent left).
  const t0 = Date.now();
  await until('the QEMU killed', async () => (await probe(qemu)) === undefined, 10_000);
  const firedMs = Date.now() - t0;
  console.log(`# QEMU killed ${(firedMs / 1000).toFixed(1)} s after the last pet (timeout 3 s)`);
  assert.ok(firedMs >= 2500, `fired too early: ${firedMs} ms`);
  await until('the watchdog exits', () => !alive(pid), 5000);
  assert.match(await readFile(join(agent1.dir, 'watchdog.log'), 'utf8'), /killed 1 QEMU/);
});

test('unarmed (no peers: no failover) it kills nothing; disarmed it exits at once', { timeout: 60_000 }, async () => {
  const a = await node();
  const unarmed = new Watchdog(a.dataDir, a.vmsRoot);
  await unarmed.start({ timeoutMs: 1500, armed: false });
  const pid = await pidOf(unarmed);
  await until('the unarmed watchdog expires', () => !alive(pid), 10_000);
  assert.ok(await probe(a.qemu), 'the QEMU still runs');
  assert.match(await readFile(join(unarmed.dir, 'watchdog.log'), 'utf8'), /unarmed .*nothing killed/);

  const b = await node();
  const armed = new Watchdog(b.dataDir, b.vmsRoot);
  await armed.start({ timeoutMs: 5000, armed: true });
  const pid2 = await pidOf(armed);
  await armed.disarm();
  await until('the disarmed watchdog exits', () => !alive(pid2), 3000);
  await sleep(5500);
  assert.ok(await probe(b.qemu), 'the QEMU still runs past the timeout');
});
