/**
 * `vessel up` (the README's first command): brings up the control plane, the node agent, the
 * tiny golden image (through a DataImportCron polling the registry `vessel up` serves) and the
 * demo VM, which boots; prints how to reach it; stops on SIGINT
 * leaving the VM running, and picks up where it left off (the same QEMU) when run again.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import YAML from 'yaml';
import { eventually, run } from './harness.ts';
import { runDirOf } from './tiny-vm.ts';

const VESSEL = resolve(import.meta.dirname, '..', 'bin', 'vessel');

/** A live process (not a zombie: QEMU daemonizes, and PID 1 here may not reap it). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Every `vessel up` started, so a failed test still ends them (and their registries) before removing the data dir. */
const children: ChildProcess[] = [];

async function killChildren(): Promise<void> {
  for (const c of children.splice(0)) {
    if (c.exitCode !== null || c.signalCode !== null) continue;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  }
}

function up(dataDir: string, ...extra: string[]): Promise<{ output: string; stop: () => Promise<string> }> {
  return new Promise((res, rej) => {
    const child = spawn(VESSEL, ['up', '--data-dir', dataDir, '--listen', '127.0.0.1:0', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let output = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      rej(new Error(`vessel up did not come up: ${output}`));
    }, 180_000);
    const onData = (d: Buffer) => {
      output += d;
      if (output.includes('Ctrl-C stops')) {
        clearTimeout(timer);
        res({
          output,
          stop: () =>
            new Promise((r) => {
              child.once('exit', (code, signal) => r(`code=${code} signal=${signal} output=${output.slice(-400)}`));
              child.kill('SIGINT');
            }),
        });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      rej(new Error(`vessel up exited (${code}): ${output}`));
    });
  });
}

describe('vessel up', () => {
  let dataDir = '';
  after(async () => {
    await killChildren();
    if (!dataDir) return;
    // Whatever happened, no demo QEMU outlives the test.
    const pid = Number(await readFile(join((await runDirOf(dataDir, 'default', 'demo')) ?? '/nonexistent', 'qemu.pid'), 'utf8').catch(() => '0'));
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await rm(dataDir, { recursive: true, force: true });
  });

  it('brings up the demo VM, which boots; Ctrl-C leaves it running; the next up re-adopts it', async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'vessel-up-'));
    const t0 = Date.now();
    const first = await up(dataDir);
    console.log(`# vessel up (fresh data dir): ${((Date.now() - t0) / 1000).toFixed(1)} s to "Vessel is up"`);
    assert.match(first.output, /golden image vessel-images\/tiny \(imported\)/);
    assert.match(first.output, /DataImportCron tiny polls 127\.0\.0\.1:\d+\/vessel\/tiny:latest/);
    assert.match(first.output, /demo VM\s+default\/demo \(created\)/);
    assert.match(first.output, /vessel console demo/);
    const kubeconfig = /kubeconfig\s+(\S+)/.exec(first.output)![1];
    const kubectl = (...args: string[]) => run('kubectl', ['--kubeconfig', kubeconfig, ...args]);
    const got = await kubectl('get', 'vm', 'demo', '-o', 'yaml');
    assert.equal(got.code, 0, got.err);
    assert.equal(YAML.parse(got.out).spec.runStrategy, 'Always');
    // The golden image came through the pipeline: the cron is up to date, its DataSource points at its import.
    const cron = YAML.parse((await kubectl('get', 'dataimportcron', 'tiny', '-n', 'vessel-images', '-o', 'yaml')).out);
    const upToDate = cron.status.conditions.find((c: { type: string }) => c.type === 'UpToDate');
    assert.equal(upToDate.status, 'True', JSON.stringify(cron.status));
    const digest = cron.metadata.annotations['cdi.kubevirt.io/storage.import.sourceDesiredDigest'];
    const imported = cron.status.lastImportedPVC.name;
    assert.equal(imported, `tiny-${digest.slice(7, 19)}`);
    const ds = YAML.parse((await kubectl('get', 'datasource', 'tiny', '-n', 'vessel-images', '-o', 'yaml')).out);
    assert.equal(ds.metadata.labels['cdi.kubevirt.io/dataImportCron'], 'tiny');
    assert.deepEqual(ds.spec.source.pvc, { name: imported, namespace: 'vessel-images' });
    const dvs = () => kubectl('get', 'dv', '-n', 'vessel-images', '-o', 'jsonpath={.items[*].metadata.name}');
    assert.equal((await dvs()).out, imported);
    await eventually(
      'demo Running',
      async () => ((await kubectl('get', 'vm', 'demo', '-o', 'jsonpath={.status.printableStatus}')).out === 'Running' ? true : undefined),
      120_000,
    );
    const serialLog = join((await runDirOf(dataDir, 'default', 'demo'))!, 'serial.log');
    await eventually(
      'the demo guest booted',
      async () => ((await readFile(serialLog, 'utf8').catch(() => '')).includes('VESSEL-GUEST-READY') ? true : undefined),
      // Generous: QEMU runs at nice 10 (--qemu-priority), and on a shared, loaded machine a TCG boot can take minutes.
      300_000,
    );
    // `vessel console demo` (what up prints) shows the boot, even though nobody watched it happen.
    const consoleOut = await new Promise<string>((res) => {
      const c = spawn(VESSEL, ['--kubeconfig', kubeconfig, 'console', 'demo'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      c.stdout.on('data', (d) => {
        out += d;
        if (out.includes('VESSEL-GUEST-READY')) c.stdin.write('\x1d');
      });
      setTimeout(() => c.kill('SIGKILL'), 30_000);
      c.on('close', () => res(out));
    });
    assert.match(consoleOut, /VESSEL-GUEST-READY/);
    const pid = Number(await readFile(join((await runDirOf(dataDir, 'default', 'demo'))!, 'qemu.pid'), 'utf8'));
    assert.match(await first.stop(), /^code=0 /);
    assert.ok(alive(pid), 'the VM outlived the control plane');

    const t1 = Date.now();
    const second = await up(dataDir, '--stop-vms-on-exit');
    console.log(`# vessel up (again): ${((Date.now() - t1) / 1000).toFixed(1)} s to "Vessel is up"`);
    assert.match(second.output, /demo VM\s+default\/demo \(exists\)/);
    assert.match(second.output, /golden image vessel-images\/tiny \(exists\)/);
    // The second up polled again (its registry, same port) and found the same digest: nothing new imported.
    const again = YAML.parse((await kubectl('get', 'dataimportcron', 'tiny', '-n', 'vessel-images', '-o', 'yaml')).out);
    assert.equal(again.metadata.annotations['cdi.kubevirt.io/storage.import.sourceDesiredDigest'], digest);
    assert.ok(
      again.metadata.annotations['cdi.kubevirt.io/storage.import.lastCronTime'] > cron.metadata.annotations['cdi.kubevirt.io/storage.import.lastCronTime'],
      'polled again',
    );
    assert.equal(again.status.lastImportedPVC.name, imported);
    assert.equal((await dvs()).out, imported);
    await eventually(
      'demo Running again',
      async () => ((await kubectl('get', 'vm', 'demo', '-o', 'jsonpath={.status.printableStatus}')).out === 'Running' ? true : undefined),
      30_000,
    );
    assert.equal(Number(await readFile(join((await runDirOf(dataDir, 'default', 'demo'))!, 'qemu.pid'), 'utf8')), pid, 're-adopted, not started again');
    assert.match(await second.stop(), /^code=0 /);
    assert.ok(!alive(pid), 'stopped with --stop-vms-on-exit');
  });
});

describe('vessel up --nodes', () => {
  let dataDir = '';
  after(async () => {
    await killChildren();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('builds a dev cluster of namespaces with an agent each, prints the nodes, and removes the namespaces on Ctrl-C', async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'vessel-up-nodes-'));
    const cluster = await up(dataDir, '--nodes', '2');
    let stopped = false;
    try {
      const rows = [...cluster.output.matchAll(/^\s+(?:nodes\s+)?(node-\d)\s+(vsl-[0-9a-f]{6}-n\d)\s+(\S+)$/gm)].map((m) => ({
        name: m[1],
        netns: m[2],
        fabricIp: m[3],
      }));
      assert.deepEqual(
        rows.map((r) => [r.name, r.fabricIp]),
        [
          ['node-0', '10.233.0.10'],
          ['node-1', '10.233.0.11'],
        ],
        cluster.output,
      );
      assert.match(cluster.output, /golden image vessel-images\/tiny \(imported, shared pool\)/);
      const kubeconfig = /kubeconfig\s+(\S+)/.exec(cluster.output)![1];
      // The tiny image came through the DataImportCron into the shared pool, as on one node.
      const ds = await run('kubectl', [
        '--kubeconfig',
        kubeconfig,
        'get',
        'datasource',
        'tiny',
        '-n',
        'vessel-images',
        '-o',
        'jsonpath={.metadata.labels.cdi\\.kubevirt\\.io/dataImportCron} {.spec.source.pvc.name}',
      ]);
      assert.match(ds.out, /^tiny tiny-[0-9a-f]{12}$/, ds.err);
      const nodes = await run('kubectl', [
        '--kubeconfig',
        kubeconfig,
        'get',
        'nodes',
        '-o',
        'jsonpath={range .items[*]}{.metadata.name}={.metadata.annotations.vessel\\.io/fabric-ip} {end}',
      ]);
      assert.equal(nodes.out.trim(), 'node-0=10.233.0.10 node-1=10.233.0.11', nodes.err);
      const netns = (await run('ip', ['netns', 'list'])).out;
      for (const r of rows) assert.match(netns, new RegExp(`^${r.netns}\\b`, 'm'));
      const br = await run('ip', ['-n', rows[0].netns, 'link', 'show', 'vsl-vx0']);
      assert.match(br.out, /master vsl-br0/);
      assert.match(await cluster.stop(), /^code=0 /);
      stopped = true;
      const after = (await run('ip', ['netns', 'list'])).out;
      for (const r of rows) assert.doesNotMatch(after, new RegExp(`^${r.netns}\\b`, 'm'), 'the namespaces are gone');
    } finally {
      if (!stopped) await cluster.stop();
    }
  });
});
