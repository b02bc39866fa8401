import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { autogroupNice, parseAutogroupNice, setAutogroupNice } from '../qemu/priority.ts';
import { boost } from './migration-boost.ts';

test('the nice value of /proc/PID/autogroup', () => {
  assert.equal(parseAutogroupNice('/autogroup-7182 nice 19\n'), 19);
  assert.equal(parseAutogroupNice('/autogroup-1 nice 0'), 0);
  assert.equal(parseAutogroupNice(''), undefined);
});

// The kernel's autogroups, on a process of its own session (as a daemonized QEMU): lowering a
// nice value needs CAP_SYS_NICE, as the agent has.
const canTest = existsSync('/proc/self/autogroup') && process.getuid?.() === 0;

test(
  'a paused transfer’s QEMU session runs at nice 0 until undone, then at its own weight again',
  { skip: !canTest && 'no autogroups or not root' },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vessel-boost-'));
    // A stand-in for QEMU: its own session (setsid), its pid in the run directory's qemu.pid.
    const child = spawn('sleep', ['60'], { detached: true, stdio: 'ignore' });
    const pid = child.pid!;
    const nice = () => autogroupNice(pid);
    try {
      await writeFile(join(dir, 'qemu.pid'), `${pid}\n`);
      assert.ok(await setAutogroupNice(pid, 19));
      const undo = await boost(dir);
      assert.equal(await nice(), 0, 'boosted during the transfer');
      await undo();
      assert.equal(await nice(), 19, 'its weight back');
      // A second undo changes nothing (the agent may put it back from two paths).
      await setAutogroupNice(pid, 7);
      await undo();
      assert.equal(await nice(), 7);
      // A session at nice 0 already (--qemu-priority off) is left as it is.
      await setAutogroupNice(pid, 0);
      const none = await boost(dir);
      await setAutogroupNice(pid, 3);
      await none();
      assert.equal(await nice(), 3, 'the undo of a boost that changed nothing does nothing');
    } finally {
      child.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
    // No pid file: nothing to boost, and no error.
    const empty = await mkdtemp(join(tmpdir(), 'vessel-boost-'));
    try {
      await (
        await boost(empty)
      )();
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  },
);
