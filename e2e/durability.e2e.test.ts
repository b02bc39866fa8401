/**
 * A SIGKILLed `vessel server` loses no write it acknowledged: a client creates VMs as fast as
 * it can, the server process is killed mid-stream, and after a restart on the same data
 * directory every VM that got a 201 is there, intact.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { findByResource } from '@vessel/api';
import { Client } from '@vessel/client';
import { vm } from './harness.ts';

const VM = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const VESSEL = resolve(import.meta.dirname, '..', 'bin', 'vessel');

/** Starts `vessel server` and resolves once it prints its kubeconfig path. */
function startServerProcess(dataDir: string): Promise<{ child: ChildProcess; kubeconfig: string }> {
  return new Promise((res, rej) => {
    const child = spawn(VESSEL, ['server', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      rej(new Error(`vessel server did not start: ${out}`));
    }, 60_000);
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /kubeconfig: (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        res({ child, kubeconfig: m[1] });
      }
    });
    child.stderr!.on('data', (d) => {
      out += d;
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      rej(new Error(`vessel server exited (${code}): ${out}`));
    });
  });
}

describe('durability of acknowledged writes', () => {
  let dataDir = '';
  const children: ChildProcess[] = [];
  after(async () => {
    children.forEach((c) => c.kill('SIGKILL'));
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('keeps every acknowledged create across a SIGKILL of the server', async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'vessel-durability-'));
    const first = await startServerProcess(dataDir);
    children.push(first.child);
    const client = Client.fromKubeconfig({ explicit: first.kubeconfig });
    const acknowledged: string[] = [];
    let failed = 0;
    let n = 0;
    let killed = false;
    const writer = async () => {
      while (!killed) {
        const name = `d-${n++}`;
        try {
          await client.create(VM, vm(name));
          acknowledged.push(name);
        } catch {
          failed++;
        }
      }
    };
    const writers = Array.from({ length: 8 }, writer);
    while (acknowledged.length < 200) await new Promise((r) => setTimeout(r, 20));
    first.child.kill('SIGKILL');
    killed = true;
    await Promise.all(writers);
    client.close();
    assert.ok(acknowledged.length >= 200);

    const second = await startServerProcess(dataDir);
    children.push(second.child);
    const after = Client.fromKubeconfig({ explicit: second.kubeconfig });
    const stored = new Map((await after.list(VM, { namespace: 'default' })).items.map((o) => [o.metadata!.name!, o]));
    const lost = acknowledged.filter((name) => !stored.has(name));
    assert.deepEqual(lost, [], `${lost.length} of ${acknowledged.length} acknowledged writes were lost`);
    for (const name of acknowledged.slice(0, 20)) assert.equal((stored.get(name)!.spec as { runStrategy: string }).runStrategy, 'Halted');
    // Writes that failed because of the kill may or may not have landed; nothing else may appear.
    assert.ok(stored.size <= acknowledged.length + failed + 8);
    after.close();
    second.child.kill('SIGTERM');
  });
});
