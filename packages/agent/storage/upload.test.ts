/**
 * receiveUpload's size limit on a real file: an upload (or the rest of a resumed one) that
 * outgrows the claim is cut off while it streams, and nothing of it is kept.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { ImportError } from './errors.ts';
import { maxImageBytes } from './import.ts';
import { MiB } from './testing.ts';
import { partPath, receiveUpload, UploadError, uploadOffset } from './upload.ts';

let work: string;
before(async () => {
  work = await mkdtemp(join(tmpdir(), 'vessel-upload-'));
});
after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** `total` bytes of zeros in 1 MiB chunks; counts what was read from it. Breaks off with an error after `failAfter`, if given. */
function body(total: number, failAfter?: number): Readable & { pulled: () => number } {
  let pulled = 0;
  const r = new Readable({
    read() {
      if (failAfter !== undefined && pulled >= failAfter) {
        this.destroy(new Error('connection reset'));
        return;
      }
      if (pulled >= total) {
        this.push(null);
        return;
      }
      const n = Math.min(MiB, total - pulled);
      pulled += n;
      this.push(Buffer.alloc(n));
    },
  });
  return Object.assign(r, { pulled: () => pulled });
}

/** Largest size the session's file reaches while `work` runs. */
async function peakOf<T>(file: string, work: () => Promise<T>): Promise<{ peak: number; result: PromiseSettledResult<T> }> {
  let peak = 0,
    running = true;
  const poll = (async () => {
    while (running) {
      peak = Math.max(
        peak,
        await stat(file).then(
          (s) => s.size,
          () => 0,
        ),
      );
      await new Promise((r) => setTimeout(r, 2));
    }
  })();
  const [result] = await Promise.allSettled([work()]);
  running = false;
  await poll;
  return { peak, result };
}

const claim = MiB;

test('an upload far larger than the claim is cut off at the claim plus format overhead, and nothing is kept', async () => {
  const dest = join(work, 'a.qcow2');
  const b = body(1024 * MiB); // 1 GiB for a 1 MiB claim
  const { peak, result } = await peakOf(partPath(dest), () => receiveUpload(dest, b, { offset: 0, claimBytes: claim }));
  assert.equal(result.status, 'rejected');
  const e = (result as PromiseRejectedResult).reason as ImportError;
  assert.ok(e instanceof ImportError && e.code === 'TooLarge', String(e));
  assert.match(e.message, /the upload was stopped at \d+ bytes .*more than an image for the claim's 1048576 bytes \(1\.00 MiB\) can take/);
  assert.ok(peak <= maxImageBytes(claim), `stored ${peak} bytes, at most ${maxImageBytes(claim)}`);
  assert.ok(b.pulled() < 64 * MiB, `read ${b.pulled()} bytes of the body before stopping`);
  assert.deepEqual(await readdir(work), [], 'no upload file left');
  console.log(`# 1 GiB upload to a 1 MiB claim: cap ${maxImageBytes(claim)} bytes, peak stored ${peak} bytes, body read ${b.pulled()} bytes`);
});

test('a resumed upload counts the bytes already received', async () => {
  const dest = join(work, 'b.qcow2');
  // First attempt breaks off after 6 MiB: kept for the resume.
  await assert.rejects(
    receiveUpload(dest, body(64 * MiB, 6 * MiB), { offset: 0, claimBytes: claim }),
    (e: unknown) => e instanceof UploadError && e.code === 499,
  );
  const have = await uploadOffset(dest);
  assert.ok(have >= 2 * MiB && have <= 6 * MiB, `kept ${have}`);
  // The resume alone (8 MiB) is within the cap (9.06 MiB), but with what is stored it is not.
  const { peak, result } = await peakOf(partPath(dest), () => receiveUpload(dest, body(8 * MiB), { offset: have, claimBytes: claim }));
  assert.equal(result.status, 'rejected');
  assert.equal(((result as PromiseRejectedResult).reason as ImportError).code, 'TooLarge');
  assert.ok(peak <= maxImageBytes(claim), `stored ${peak}`);
  assert.deepEqual(await readdir(work), []);
});

test('an announced Upload-Length above the cap is refused before a byte is stored', async () => {
  const dest = join(work, 'c.qcow2');
  const b = body(10 * 1024 * MiB);
  await assert.rejects(
    receiveUpload(dest, b, { offset: 0, length: 10 * 2 ** 30, claimBytes: claim }),
    (e: unknown) => e instanceof ImportError && e.code === 'TooLarge' && /10737418240 bytes \(10\.00 GiB\)/.test(e.message),
  );
  assert.equal(b.pulled(), 0);
  assert.deepEqual(await readdir(work), []);
});

test('an upload that fits is kept whole', async () => {
  const dest = join(work, 'd.qcow2');
  const r = await receiveUpload(dest, body(maxImageBytes(claim)), { offset: 0, claimBytes: claim });
  assert.deepEqual(r, { received: maxImageBytes(claim), complete: true });
  await rm(partPath(dest));
});
