/**
 * `vessel up` (the README's first command): brings up the control plane with the demo VM,
 * prints how to reach it, stops on SIGINT, and picks up where it left off when run again.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import YAML from 'yaml';
import { run } from './harness.ts';

const VESSEL = resolve(import.meta.dirname, '..', 'bin', 'vessel');

function up(dataDir: string): Promise<{ output: string; stop: () => Promise<string> }> {
  return new Promise((res, rej) => {
    const child = spawn(VESSEL, ['up', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); rej(new Error(`vessel up did not come up: ${output}`)); }, 60_000);
    const onData = (d: Buffer) => {
      output += d;
      if (output.includes('Ctrl-C stops')) {
        clearTimeout(timer);
        res({ output, stop: () => new Promise((r) => { child.once('exit', (code, signal) => r(`code=${code} signal=${signal} output=${output.slice(-400)}`)); child.kill('SIGINT'); }) });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => { clearTimeout(timer); rej(new Error(`vessel up exited (${code}): ${output}`)); });
  });
}

describe('vessel up', () => {
  let dataDir = '';
  after(async () => { if (dataDir) await rm(dataDir, { recursive: true, force: true }); });

  it('brings up the control plane with the demo VM, and comes back to it', async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'vessel-up-'));
    const first = await up(dataDir);
    assert.match(first.output, /demo VM\s+default\/demo \(created\)/);
    const kubeconfig = /kubeconfig\s+(\S+)/.exec(first.output)![1];
    const got = await run('kubectl', ['--kubeconfig', kubeconfig, 'get', 'vm', 'demo', '-o', 'yaml']);
    assert.equal(got.code, 0, got.err);
    assert.equal(YAML.parse(got.out).spec.runStrategy, 'Always');
    assert.match(await first.stop(), /^code=0 /);

    const second = await up(dataDir);
    assert.match(second.output, /demo VM\s+default\/demo \(exists\)/);
    assert.match(await second.stop(), /^code=0 /);
  });
});
