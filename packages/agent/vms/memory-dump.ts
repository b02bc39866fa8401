/**
 * A guest's memory dumped for analysis (KubeVirt's `memorydump` VM subresource): QEMU writes
 * an ELF core (QMP dump-guest-memory, readable by crash/gdb/volatility) into the claim's dump
 * directory, `<volume>.memory-dumps/` beside the claim's qcow2 volume in its pool (Vessel's
 * claims are qcow2 volumes, not filesystems: the claim is not hotplugged into the guest as in
 * KubeVirt). The dump runs detached; its end is recorded in the VM's
 * `status.memoryDumpRequest` (Completed or Failed, endTimestamp).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { storage, refs } from '@vessel/api';
import type { Client } from '@vessel/client';
import { updateStatus, type KubeObject } from '@vessel/runtime';
import type { QmpClient } from '../qmp/client.ts';
import { containedPath, type Pool } from '../storage/pools.ts';

/** A file name the API server made (`<vm>-<claim>-<stamp>.memory.dump`): nothing else is written. */
const FILE_NAME = /^[a-z0-9][a-z0-9.-]*\.memory\.dump$/;

/** The directory a claim's dumps go to: beside its volume, in the claim's own namespace directory. */
export function dumpDirOf(pools: Iterable<Pool>, namespace: string, claim: KubeObject | undefined): string {
  const recorded = claim?.metadata.annotations?.[storage.VOLUME_PATH];
  if (!claim || !recorded) throw new MemoryDumpError(409, `PersistentVolumeClaim ${namespace}/${claim?.metadata.name ?? ''} has no volume on this node yet`);
  const { path } = containedPath(pools, namespace, recorded, storage.VOLUME_PATH);
  return `${path.replace(/\.qcow2$/, '')}.memory-dumps`;
}

export class MemoryDumpError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
    this.name = 'MemoryDumpError';
  }
}

/**
 * Starts the dump (QEMU pauses the guest while it copies its RAM, then resumes it) and returns;
 * the VM's status says how it ended.
 */
export async function startMemoryDump(opts: {
  client: Client;
  qmp: QmpClient;
  pools: Iterable<Pool>;
  claim: KubeObject | undefined;
  namespace: string;
  vm: string;
  fileName: string;
  log: (line: string) => void;
}): Promise<void> {
  if (!FILE_NAME.test(opts.fileName)) throw new MemoryDumpError(400, `invalid memory dump file name ${JSON.stringify(opts.fileName)}`);
  const dir = dumpDirOf(opts.pools, opts.namespace, opts.claim);
  await mkdir(dir, { recursive: true });
  const file = join(dir, opts.fileName);
  await opts.qmp.execute('dump-guest-memory', { paging: false, protocol: `file:${file}`, detach: true, format: 'elf' });
  void (async () => {
    let result: { status: string; message?: string };
    try {
      result = await waitDump(opts.qmp);
    } catch (e) {
      result = { status: 'failed', message: e instanceof Error ? e.message : String(e) };
    }
    const done = result.status === 'completed';
    await updateStatus(opts.client, refs.VMS, opts.namespace, opts.vm, (s) => {
      const req = s.memoryDumpRequest as Record<string, unknown> | undefined;
      if (!req || req.fileName !== opts.fileName) return false; // removed, or another dump since
      s.memoryDumpRequest = {
        ...req,
        phase: done ? 'Completed' : 'Failed',
        endTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
        ...(done ? {} : { message: `the memory dump failed${result.message ? `: ${result.message}` : ''}` }),
      };
    }).catch((e: Error) => opts.log(`memory dump of ${opts.namespace}/${opts.vm}: recording its end: ${e.message}`));
  })();
}

/** Polls query-dump until the dump ends (a TCG guest of 1 GiB takes seconds). */
async function waitDump(qmp: QmpClient, timeoutMs = 30 * 60_000): Promise<{ status: string }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await qmp.execute<{ status: string; completed: number; total: number }>('query-dump');
    if (r.status === 'completed' || r.status === 'failed') return r;
    if (Date.now() > deadline) return { status: 'failed' };
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}
