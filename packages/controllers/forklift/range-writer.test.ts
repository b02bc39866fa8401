/**
 * writeRanges against a real target: an NBD export with TLS-PSK (qemu-nbd on loopback, as the
 * agent's warm export runs it) of a qcow2 volume this test makes, written by qemu-io; the ranges come from a raw source file
 * of the test. The target then equals the source where the ranges are and stays zero elsewhere;
 * a wrong key and a short read fail with their codes and write nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { FFDHE2048_PEM } from '@vessel/tls';
import { chunks, RangeWriteError, writeRanges, type NbdTarget } from './range-writer.ts';

const MiB = 1024 * 1024;

/** qemu-nbd serving `path` on a free loopback port with a PSK, as the agent's warm export does. */
async function exportTarget(dir: string, path: string): Promise<NbdTarget & { stop: () => Promise<void> }> {
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  const psk = join(dir, 'psk');
  await mkdir(psk, { mode: 0o700 });
  const key = 'ab'.repeat(32);
  await writeFile(join(psk, 'keys.psk'), `test-id:${key}\n`, { mode: 0o600 });
  await writeFile(join(psk, 'dh-params.pem'), FFDHE2048_PEM, { mode: 0o600 });
  const args = ['--object', `tls-creds-psk,id=tls0,endpoint=server,dir=${psk}`, '--tls-creds', 'tls0', '--persistent', '-f', 'qcow2', '-x', 'disk'];
  const child = spawn('qemu-nbd', [...args, '-b', '127.0.0.1', '-p', String(port), path], { stdio: 'ignore' });
  for (let i = 0; ; i++) {
    const up = await new Promise<boolean>((r) => {
      const c = connect(port, '127.0.0.1', () => (c.destroy(), r(true))).on('error', () => r(false));
    });
    if (up) break;
    if (i > 100) throw new Error('qemu-nbd did not listen');
    await new Promise((r) => setTimeout(r, 50));
  }
  const exited = new Promise((r) => child.once('exit', r));
  return {
    address: `127.0.0.1:${port}`,
    export: 'disk',
    identity: 'test-id',
    key,
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

test('chunks cut ranges at 4 MiB', () => {
  assert.deepEqual(chunks([{ start: 1, length: 9 * MiB }]), [
    { start: 1, length: 4 * MiB },
    { start: 1 + 4 * MiB, length: 4 * MiB },
    { start: 1 + 8 * MiB, length: MiB },
  ]);
});

test('writeRanges: only the ranges land on the target, at their offsets; a wrong key or short read fails', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vessel-rw-test-'));
  try {
    const src = join(dir, 'src.raw');
    const buf = Buffer.alloc(16 * MiB);
    for (let i = 0; i < buf.length; i += 4096) buf.writeUInt32LE(i / 4096 + 1, i);
    await writeFile(src, buf);
    const vol = join(dir, 'target.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', vol, String(16 * MiB)]);
    const t = await exportTarget(dir, vol);
    const read = (start: number, length: number) => Promise.resolve(createReadStream(src, { start, end: start + length - 1 }));
    const ranges = [
      { start: 65536, length: 5 * MiB },
      { start: 12 * MiB + 512, length: 3000 },
    ];
    try {
      await assert.rejects(
        writeRanges({ ...t, key: '00'.repeat(32) }, ranges, read),
        (e: unknown) => e instanceof RangeWriteError && e.code === 'RangeWriteFailed',
      );
      // Values that would add qemu-io options (they come from an agent's answer and a tenant's Secret).
      for (const bad of [{ export: `${t.export},file.filename=/x` }, { identity: 'a,dir=/tmp' }, { address: 'h,x=1:10809' }])
        await assert.rejects(
          writeRanges({ ...t, ...bad }, ranges, read),
          (e: unknown) => e instanceof RangeWriteError && e.code === 'RangeWriteFailed' && /not a plain name/.test(e.message),
        );
      await assert.rejects(
        writeRanges(t, ranges, () => Promise.resolve(Readable.from([Buffer.alloc(10)]))),
        (e: unknown) => e instanceof RangeWriteError && e.code === 'RangeReadFailed',
      );
      const seen: number[] = [];
      const n = await writeRanges(t, ranges, read, { progress: (d) => seen.push(d) });
      assert.equal(n, 5 * MiB + 3000);
      assert.deepEqual(seen, [n]);
    } finally {
      await t.stop();
    }
    execFileSync('qemu-img', ['convert', '-O', 'raw', vol, join(dir, 'out.raw')]);
    const out = await readFile(join(dir, 'out.raw'));
    const expect = Buffer.alloc(16 * MiB);
    for (const r of ranges) buf.copy(expect, r.start, r.start, r.start + r.length);
    assert.ok(out.equals(expect), 'the target holds the source bytes of the ranges, zeros elsewhere');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
