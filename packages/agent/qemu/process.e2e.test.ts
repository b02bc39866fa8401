/**
 * The VM process layer with real QEMU (TCG) and the tiny guest: launch detached, serial log,
 * pause/resume over QMP, re-adoption after an agent restart (and after the launching process
 * is SIGKILLed), ACPI power-off, failed launches, stale pidfiles and the pid-reuse guard.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ensureTinyGuest, tinyOverlay, tinyQemuArgv, TINY_SERIAL, type TinyGuest } from '@vessel/guest';
import { QmpClient, type QmpEvent } from '../qmp/client.ts';
import { QemuLaunchError, QemuProcessError } from './errors.ts';
import { adopt, attachSerial, launch, listRunDirs, probe, readSerialLog, runDirFiles, serialLogSize, terminate, waitExit, waitForSerial } from './process.ts';
import { findPriorityTools, type LaunchPriority } from './priority.ts';

let guest: TinyGuest;
let root: string;
const started: string[] = [];
const clients: QmpClient[] = [];

before(async () => {
  guest = await ensureTinyGuest();
  root = await mkdtemp(join(tmpdir(), 'vessel-proc-'));
});

after(async () => {
  for (const c of clients) await c.close();
  for (const dir of started) await terminate(dir, { graceMs: 2000 });
  if (root) await rm(root, { recursive: true, force: true });
});

const since0 = performance.now();
const log = (what: string) => console.log(`# ${((performance.now() - since0) / 1000).toFixed(1)} s ${what}`);

/** A qcow2 overlay of the cached tiny disk, so the cache entry is never written. */
const overlay = (name: string): string => tinyOverlay(guest, join(root, name));
const tinyArgv = (disk: string, extra: string[] = []): string[] => tinyQemuArgv(guest, disk, extra);

async function connect(qmpPath: string): Promise<QmpClient> {
  const c = await QmpClient.connect(qmpPath, { timeoutMs: 10_000 });
  clients.push(c);
  return c;
}

/** Live (non-zombie) processes whose command line mentions `text`. */
async function livePidsMentioning(text: string): Promise<number[]> {
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmd = await readFile(`/proc/${name}/cmdline`, 'utf8');
      const stat = await readFile(`/proc/${name}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (cmd.includes(text) && state !== 'Z' && Number(name) !== process.pid) out.push(Number(name));
    } catch {
      // exited while we looked
    }
  }
  return out;
}

async function parentPid(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

test('launch detached, pause and resume, re-adopt after an agent restart, ACPI power-off', { timeout: 90_000 }, async () => {
  const runDir = join(root, 'vm1');
  started.push(runDir);
  const disk = overlay('vm1.qcow2');
  const { pid, files, serialOffset } = await launch({
    runDir,
    argv: tinyArgv(disk),
    vm: { uid: 'uid-1', namespace: 'default', name: 'tiny' },
    meta: { generation: '3' },
  });
  log(`launched pid ${pid}`);
  assert.equal(serialOffset, 0);
  assert.equal((await readFile(files.pidfile, 'utf8')).trim(), String(pid));
  assert.notEqual(await parentPid(pid), process.pid, 'QEMU is not our child');
  for (const f of [files.qmp, files.serial]) assert.ok(existsSync(f), f);

  await waitForSerial(runDir, TINY_SERIAL.ready, 60_000);
  log('guest ready');
  assert.match(await readSerialLog(runDir), /Linux version/);

  let qmp = await connect(files.qmp);
  const events: QmpEvent[] = [];
  qmp.on('event', (ev) => events.push(ev));
  assert.equal((await qmp.execute<{ status: string }>('query-status')).status, 'running');

  const stopEv = qmp.waitForEvent('STOP', { timeoutMs: 10_000 });
  await qmp.execute('stop');
  await stopEv;
  const paused = await qmp.execute<{ status: string; running: boolean }>('query-status');
  assert.equal(paused.status, 'paused');
  assert.equal(paused.running, false);
  // While paused the guest prints nothing: at most a line already on its way.
  const pausedAt = await serialLogSize(runDir);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const whilePaused = (await readSerialLog(runDir)).slice(pausedAt);
  assert.ok((whilePaused.match(/VESSEL-COUNTER/g) ?? []).length <= 1, whilePaused);
  const resumeEv = qmp.waitForEvent('RESUME', { timeoutMs: 10_000 });
  await qmp.execute('cont');
  await resumeEv;
  assert.deepEqual(
    events.map((e) => e.event),
    ['STOP', 'RESUME'],
  );
  log('paused and resumed');

  // The agent restarts: its client goes away, a new agent finds the VM from the run directory.
  await qmp.close();
  const adopted = await adopt(runDir);
  assert.ok(adopted);
  assert.equal(adopted.pid, pid);
  assert.equal(adopted.runDir, files.dir);
  assert.equal(adopted.meta.uid, 'uid-1');
  assert.equal(adopted.meta.namespace, 'default');
  assert.equal(adopted.meta.name, 'tiny');
  assert.deepEqual(adopted.meta.meta, { generation: '3' });
  assert.ok(adopted.meta.argv?.some((a) => a.includes(disk)));
  const listed = await listRunDirs(root);
  assert.deepEqual(
    listed.map((v) => [v.runDir, v.pid]),
    [[files.dir, pid]],
  );

  const afterRestart = await serialLogSize(runDir);
  qmp = await connect(files.qmp);
  assert.equal((await qmp.execute<{ status: string }>('query-status')).status, 'running');
  const c1 = await waitForSerial(runDir, TINY_SERIAL.counter, 20_000, { since: afterRestart });
  const c2 = await waitForSerial(runDir, TINY_SERIAL.counter, 20_000, { since: c1.offset });
  assert.ok(Number(c2.match[1]) > Number(c1.match[1]), 'the guest keeps counting after re-adoption');
  log(`counter ${c1.match[1]} -> ${c2.match[1]} after re-adoption`);

  // The serial socket carries the same output live, and serial.log keeps recording meanwhile.
  const sock = await attachSerial(runDir);
  let live = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no counter on serial.sock within 15 s: ${JSON.stringify(live)}`)), 15_000);
    sock.setEncoding('utf8').on('data', (d: string) => {
      live += d;
      if (/VESSEL-COUNTER \d+\r?\n/.test(live)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  sock.destroy();
  const liveN = /VESSEL-COUNTER (\d+)/.exec(live)![1];
  // QEMU writes the socket first and the log right after: allow for that gap on a busy host.
  await waitForSerial(runDir, new RegExp(`VESSEL-COUNTER ${liveN}\\r?\\n`), 5000, { since: afterRestart });

  const beforePowerdown = await serialLogSize(runDir);
  const shutdown = qmp.waitForEvent('SHUTDOWN', { timeoutMs: 30_000 });
  const closed = new Promise<string>((resolve) => qmp.once('close', resolve));
  // A wait for output that never comes ends when QEMU does, not at its deadline.
  const never = waitForSerial(runDir, 'NOT-PRINTED-BY-THE-GUEST', 60_000, { since: beforePowerdown }).then(
    () => assert.fail('matched'),
    (err: unknown) => err,
  );
  await qmp.execute('system_powerdown');
  await waitForSerial(runDir, 'VESSEL-POWERDOWN', 20_000, { since: beforePowerdown });
  const ev = await shutdown;
  assert.equal(ev.data.guest, true);
  log(`SHUTDOWN ${JSON.stringify(ev.data)}`);
  assert.ok(await waitExit(pid, 20_000), 'QEMU exits after the guest powers off');
  assert.match(await closed, /QEMU closed the connection/);
  const neverErr = await never;
  assert.ok(neverErr instanceof QemuProcessError && neverErr.code === 'Exited', String(neverErr));
  assert.match(neverErr.message, /exited before its serial output matched/);
  log('QEMU exited');
  assert.match(await readSerialLog(runDir), /VESSEL-SHUTDOWN-DONE root=ro/);
  assert.equal(await adopt(runDir), undefined);
  assert.equal(existsSync(files.pidfile), false);
  assert.equal(existsSync(files.qmp), false);
  assert.equal(existsSync(files.serialLog), true, 'serial.log stays for post-mortems');
});

test("a launch that fails throws QEMU's reason and leaves no process; owned options are refused", async () => {
  const runDir = join(root, 'vm2');
  started.push(runDir);
  const missing = join(root, 'missing.qcow2');
  await assert.rejects(launch({ runDir, argv: tinyArgv(missing) }), (err: unknown) => {
    assert.ok(err instanceof QemuLaunchError, String(err));
    assert.equal(err.code, 'LaunchFailed');
    assert.equal(err.exitCode, 1);
    assert.match(err.message, /^QEMU failed to start: -drive file=.*missing\.qcow2.*Could not open '.*missing\.qcow2': No such file or directory$/);
    assert.match(err.stderr, /Could not open/);
    return true;
  });
  const files = runDirFiles(runDir);
  assert.deepEqual(await livePidsMentioning(files.dir), []);
  assert.equal(existsSync(files.pidfile), false);
  assert.equal(existsSync(files.qmp), false);
  assert.match(await readFile(files.log, 'utf8'), /Could not open/);
  assert.equal(await adopt(runDir), undefined);

  await assert.rejects(waitForSerial(runDir, 'VESSEL-GUEST-READY', 300), (err: unknown) => {
    assert.ok(err instanceof QemuProcessError);
    assert.equal(err.code, 'SerialTimeout');
    assert.match(err.message, /no serial output matching \/VESSEL-GUEST-READY\/ in .*serial\.log within 300 ms/);
    return true;
  });

  await assert.rejects(launch({ runDir, argv: ['-daemonize'] }), (err: unknown) => err instanceof QemuProcessError && err.code === 'InvalidArgument');
  await assert.rejects(launch({ runDir, argv: [], binary: join(root, 'no-such-qemu') }), (err: unknown) => {
    assert.ok(err instanceof QemuLaunchError);
    assert.match(err.message, /cannot run .*no-such-qemu: .*ENOENT/);
    return true;
  });
  // Through nice/chrt a missing binary is still said the same way (not as their exit 127).
  const priority: LaunchPriority = { nice: 10, batch: true, tools: await findPriorityTools() };
  await assert.rejects(launch({ runDir, argv: [], binary: join(root, 'no-such-qemu'), priority }), (err: unknown) => {
    assert.ok(err instanceof QemuLaunchError);
    assert.match(err.message, /cannot run .*no-such-qemu: .*ENOENT/);
    return true;
  });
});

test('launch with a priority: every QEMU thread, the vCPU made after start included, has it; a re-adopted QEMU keeps it', { timeout: 60_000 }, async () => {
  const tools = await findPriorityTools();
  assert.ok(tools.nice && tools.chrt, 'nice (coreutils) and chrt (util-linux) are installed');
  const runDir = join(root, 'vm-prio');
  started.push(runDir);
  const { pid } = await launch({ runDir, argv: tinyArgv(overlay('prio.qcow2')), priority: { nice: 7, batch: true, tools } });
  await waitForSerial(runDir, TINY_SERIAL.ready, 60_000);
  const sched = async (tid: string) => {
    const st = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return { nice: Number(f[16]), policy: Number(f[38]) }; // stat fields 19 and 41
  };
  const tids = await readdir(`/proc/${pid}/task`);
  assert.ok(tids.length >= 2, `${tids.length} threads`);
  for (const tid of tids) assert.deepEqual(await sched(tid), { nice: 7, policy: 3 }, `thread ${tid}`); // 3: SCHED_BATCH
  // -daemonize's setsid made QEMU a session of its own: its autogroup is the lightest there is.
  const autogroup = await readFile(`/proc/${pid}/autogroup`, 'utf8').catch(() => undefined);
  if (autogroup !== undefined) assert.match(autogroup, /nice 19$/m);
  const again = await adopt(runDir);
  assert.equal(again?.pid, pid);
  for (const tid of await readdir(`/proc/${pid}/task`)) assert.deepEqual(await sched(tid), { nice: 7, policy: 3 }, `thread ${tid} after adopt`);
});

test('stale pidfile with a recycled pid: adopt refuses it, launch works; the VM outlives a SIGKILLed agent', { timeout: 60_000 }, async () => {
  const runDir = join(root, 'vm3');
  started.push(runDir);
  const files = runDirFiles(runDir);
  await mkdir(runDir, { recursive: true });
  // Our own pid: alive, but not a QEMU of this run directory.
  await writeFile(files.pidfile, `${process.pid}\n`);
  await writeFile(files.qmp, 'stale');
  assert.equal(await probe(runDir), undefined);

  // An "agent" in another process launches the VM and is then killed with SIGKILL. It uses the
  // argv builder's conventions: its own serial device and guest agent port on chardevs
  // serial0/qga0, which launch() defines; and a VNC socket.
  const builderStyle = [
    '-device',
    'isa-serial,chardev=serial0,id=serial0',
    '-device',
    'virtio-serial-pci,id=virtio-serial0',
    '-device',
    'virtserialport,bus=virtio-serial0.0,chardev=qga0,name=org.qemu.guest_agent.0',
    '-S',
  ];
  const chardevs = [
    { id: 'serial0', role: 'serial-console' },
    { id: 'qga0', role: 'guest-agent' },
  ];
  const script = join(root, 'agent.mts');
  const processTs = fileURLToPath(new URL('./process.ts', import.meta.url));
  await writeFile(
    script,
    `import { launch } from ${JSON.stringify(processTs)};\n` +
      `const r = await launch({ runDir: ${JSON.stringify(runDir)}, argv: ${JSON.stringify(tinyArgv(overlay('vm3.qcow2'), builderStyle))}, ` +
      `chardevs: ${JSON.stringify(chardevs)}, vnc: true, vm: { uid: 'uid-3', name: 'paused' } });\n` +
      `console.log('PID ' + r.pid);\nsetInterval(() => undefined, 1000);\n`,
  );
  const agent = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const agentExit = new Promise((resolve) => agent.once('exit', resolve));
  let out = '';
  const pid = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent did not report a pid within 30 s: ${out}`)), 30_000);
    agent.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /PID (\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
  assert.notEqual(pid, process.pid);
  agent.kill('SIGKILL');
  await agentExit;
  log(`agent killed, QEMU pid ${pid}`);

  const adopted = await adopt(runDir);
  assert.equal(adopted?.pid, pid, 'QEMU survives the agent');
  assert.equal(adopted?.meta.uid, 'uid-3');
  const qmp = await connect(files.qmp);
  assert.equal((await qmp.execute<{ status: string }>('query-status')).status, 'prelaunch');
  const devs = await qmp.execute<{ label: string; filename: string }[]>('query-chardev');
  const byLabel = new Map(devs.map((d) => [d.label, d.filename]));
  assert.match(byLabel.get('serial0') ?? '', /serial\.sock/);
  assert.match(byLabel.get('qga0') ?? '', /qga\.sock/);
  await qmp.close();
  const rfb = await new Promise<string>((resolve, reject) => {
    const s = net.createConnection({ path: files.vnc });
    s.once('data', (d) => {
      s.destroy();
      resolve(d.toString('latin1'));
    });
    s.once('error', reject);
  });
  assert.match(rfb, /^RFB 003\.008\n/);

  await assert.rejects(launch({ runDir, argv: tinyArgv(overlay('vm3b.qcow2')) }), (err: unknown) => {
    assert.ok(err instanceof QemuProcessError);
    assert.equal(err.code, 'AlreadyRunning');
    assert.match(err.message, new RegExp(`pid ${pid}`));
    return true;
  });

  // A run directory whose QEMU died without cleaning up is not listed, and adopt() tidies it.
  const dead = runDirFiles(join(root, 'vm4'));
  await mkdir(dead.dir);
  await writeFile(dead.pidfile, '2147480000\n');
  await writeFile(dead.serial, '');
  const listed = (await listRunDirs(root)).map((v) => v.runDir);
  assert.ok(listed.includes(files.dir));
  assert.ok(!listed.includes(dead.dir));
  assert.equal(await adopt(dead.dir), undefined);
  assert.equal(existsSync(dead.pidfile), false);
  assert.equal(existsSync(dead.serial), false);

  assert.equal(await terminate(runDir, { graceMs: 5000 }), true);
  assert.equal(await adopt(runDir), undefined);
  assert.deepEqual(await livePidsMentioning(files.dir), []);
});
