/**
 * Warm copy of a running guest's disk to another node's volume (docs/forklift.md, "Warm
 * migration"): the source QEMU tracks the disk's writes in a dirty bitmap and pushes rounds of
 * `blockdev-backup` into an NBD export of the target volume: `sync: full` with the bitmap
 * (`bitmap-mode: on-success`: once the copy succeeds, the bitmap holds only the writes made since
 * it began), then `sync: incremental` rounds that copy the bitmap's clusters and clear them the
 * same way. A failed round leaves the bitmap as it was (QEMU merges the job's successor back), so
 * the next round copies those clusters again.
 *
 * The target volume is served by `qemu-nbd` with TLS-PSK: a random key per export, which only
 * the caller (the controller, which passes it to the source) learns; qemu-nbd listens on a unix
 * socket and a relay (migration-relay.ts) joins it to TCP on the node's address, as the live
 * migration's NBD does. On the source another relay gives QEMU a unix socket in its run
 * directory (a QEMU in a pod namespace cannot reach the fabric); TLS stays end to end.
 *
 * Bitmaps are not persistent: raw volumes cannot store them and a restarted QEMU starts over
 * with a full round (the caller sees `tracking: false`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeQemuTlsDir } from '@vessel/tls';
import { blockNodeNames } from '../qemu/argv.ts';
import type { QmpClient } from '../qmp/client.ts';
import { formatHostPort, MigrationRelay, parseHostPort } from './migration-relay.ts';

/** Prefix of our bitmaps, job ids, NBD client nodes and TLS objects (a clean-up finds them by it). */
export const WARM_PREFIX = 'vslwarm-';
const QMP_TIMEOUT_MS = 60_000;
const POLL_MS = 250;
const START_TIMEOUT_MS = 15_000;
/** QEMU's NBD client `open-timeout` (s): see block-migration.ts, NBD_OPEN_TIMEOUT_S, for the QEMU 7.2 deadlock it avoids. */
const NBD_OPEN_TIMEOUT_S = 5;

type Qmp = Pick<QmpClient, 'execute'>;

export class WarmCopyError extends Error {
  constructor(
    readonly code: 'WarmCopyFailed' | 'WarmExportFailed' | 'WarmNoBitmap',
    message: string,
  ) {
    super(message);
    this.name = 'WarmCopyError';
  }
}

/** Where and how a source reaches a target volume: what the target's export returns. */
export interface WarmTarget {
  /** `host:port` of the target node's relay. */
  address: string;
  /** The NBD export name. */
  export: string;
  /** The TLS-PSK identity and key (hex). */
  identity: string;
  key: string;
}

/** The target side: a volume served over NBD with TLS-PSK until `stop()`. */
export interface TargetExport extends WarmTarget {
  stop(): Promise<void>;
}

/**
 * Target: serves `path` (raw or qcow2) writable over NBD on `host` (port chosen by the kernel),
 * in network namespace `netns` when given. The key is random, 256 bits.
 */
export async function exportTarget(opts: {
  path: string;
  format: 'raw' | 'qcow2';
  host: string;
  netns?: string;
  exportName?: string;
  qemuNbd?: string;
}): Promise<TargetExport> {
  const dir = await mkdtemp(join(tmpdir(), 'vessel-warm-'));
  const identity = `${WARM_PREFIX}${randomBytes(4).toString('hex')}`;
  const key = randomBytes(32).toString('hex');
  const name = opts.exportName ?? 'disk';
  const sock = join(dir, 'nbd.sock');
  let child: ChildProcess | undefined;
  let relay: MigrationRelay | undefined;
  const stop = async () => {
    await relay?.close(0).catch(() => undefined);
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGTERM'); // qemu-nbd flushes the image as it exits
      await Promise.race([exited, sleep(10_000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await writeQemuTlsDir(join(dir, 'psk'), { type: 'psk', keys: [{ identity, key }] });
    child = spawn(
      opts.qemuNbd ?? 'qemu-nbd',
      [
        '--object',
        `tls-creds-psk,id=tls0,endpoint=server,dir=${join(dir, 'psk')}`,
        '--tls-creds',
        'tls0',
        '--persistent',
        '--shared=1',
        '-f',
        opts.format,
        '-x',
        name,
        '-k',
        sock,
        opts.path,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString('utf8')).slice(-2000)));
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!(await exists(sock))) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`qemu-nbd exited: ${err.trim() || child.exitCode}`);
      if (Date.now() > deadline) throw new Error(`qemu-nbd did not listen within ${START_TIMEOUT_MS / 1000} s`);
      await sleep(50);
    }
    relay = await MigrationRelay.start([{ listen: { host: opts.host, port: 0 }, connect: { path: sock } }], { netns: opts.netns });
    return { address: formatHostPort({ host: opts.host, port: relay.port(0) }), export: name, identity, key, stop };
  } catch (e) {
    await stop();
    throw new WarmCopyError('WarmExportFailed', `exporting ${opts.path}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** A disk's bitmap name (QEMU's limit on names is generous; the volume keeps it readable). */
export const bitmapName = (volume: string): string => `${WARM_PREFIX}${volume}`;

/** Whether change tracking runs on the disk of `volume` (false after a QEMU restart). */
export async function tracking(qmp: Qmp, volume: string): Promise<boolean> {
  const node = blockNodeNames(volume).format;
  const nodes = await exec<{ 'node-name': string; 'dirty-bitmaps'?: { name: string }[] }[]>(qmp, 'query-named-block-nodes', { flat: true });
  return !!nodes.find((n) => n['node-name'] === node)?.['dirty-bitmaps']?.some((b) => b.name === bitmapName(volume));
}

export interface RoundProgress {
  /** Bytes copied so far and to copy in this round (QEMU's job offset and len). */
  done: number;
  total: number;
}

export interface RoundResult extends RoundProgress {
  mode: 'full' | 'incremental';
}

/**
 * Source: one round for the disk of `volume` into `target`. `full` (re)starts change tracking (a
 * new bitmap) and copies the whole disk; `incremental` copies what the bitmap holds and throws
 * WarmNoBitmap when there is none (QEMU restarted: the caller goes back to full). `runDir` is the
 * VM's run directory (the relay socket and PSK file go there for the round's length); `netns` the
 * node's namespace, where the relay reaches the target.
 */
export async function copyRound(
  qmp: Qmp,
  opts: {
    volume: string;
    mode: 'full' | 'incremental';
    target: WarmTarget;
    runDir: string;
    netns?: string;
    onProgress?: (p: RoundProgress) => void;
    stop?: () => boolean;
  },
): Promise<RoundResult> {
  const { volume, target } = opts;
  const bitmap = bitmapName(volume);
  const node = blockNodeNames(volume).format;
  const id = `${WARM_PREFIX}${volume}`.slice(0, 31);
  if (opts.mode === 'incremental' && !(await tracking(qmp, volume))) {
    throw new WarmCopyError('WarmNoBitmap', `volume ${volume}: no change tracking on this disk (its QEMU restarted?): a full round is needed`);
  }
  const work = join(opts.runDir, `warm-${randomBytes(3).toString('hex')}`);
  let relay: MigrationRelay | undefined;
  try {
    await writeQemuTlsDir(work, { type: 'psk', keys: [{ identity: target.identity, key: target.key }] });
    const sock = join(work, 's');
    relay = await MigrationRelay.start([{ listen: { path: sock }, connect: parseHostPort(target.address) }], { netns: opts.netns });
    await cleanRound(qmp, volume);
    await exec(qmp, 'object-add', { 'qom-type': 'tls-creds-psk', id, endpoint: 'client', dir: work, username: target.identity });
    await exec(qmp, 'blockdev-add', {
      driver: 'nbd',
      'node-name': id,
      server: { type: 'unix', path: sock },
      export: target.export,
      'tls-creds': id,
      'open-timeout': NBD_OPEN_TIMEOUT_S,
    });
    const sizes = await nodeSizes(qmp);
    if (sizes.get(node) !== sizes.get(id)) throw new Error(`the target volume has ${sizes.get(id)} bytes, the disk ${sizes.get(node)}`);
    if (opts.mode === 'full') {
      // A new bitmap: what an earlier full round left no longer matches the target.
      await exec(qmp, 'block-dirty-bitmap-remove', { node, name: bitmap }).catch(() => undefined);
      await exec(qmp, 'block-dirty-bitmap-add', { node, name: bitmap, persistent: false });
    }
    await exec(qmp, 'blockdev-backup', {
      'job-id': id,
      device: node,
      target: id,
      sync: opts.mode,
      bitmap,
      'bitmap-mode': 'on-success',
      'auto-dismiss': false,
    });
    let last: RoundProgress = { done: 0, total: 0 };
    for (;;) {
      const job = (await exec<{ device: string; status?: string; len?: number; offset?: number; error?: string }[]>(qmp, 'query-block-jobs')).find(
        (j) => j.device === id,
      );
      if (!job) throw new Error('the backup job vanished');
      last = { done: job.offset ?? 0, total: job.len ?? 0 };
      opts.onProgress?.(last);
      if (job.status === 'concluded') {
        await exec(qmp, 'job-dismiss', { id });
        if (job.error) throw new Error(job.error);
        return { mode: opts.mode, ...last };
      }
      if (opts.stop?.()) throw new Error('the round was cancelled');
      await sleep(POLL_MS);
    }
  } catch (e) {
    if (e instanceof WarmCopyError) throw e;
    throw new WarmCopyError('WarmCopyFailed', `volume ${volume}, ${opts.mode} round: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    await cleanRound(qmp, volume).catch(() => undefined);
    await relay?.close(0).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}

/** Source: a round's job (cancelled), NBD client node and TLS object go; the bitmap stays. */
async function cleanRound(qmp: Qmp, volume: string): Promise<void> {
  const id = `${WARM_PREFIX}${volume}`.slice(0, 31);
  const jobs = await exec<{ device: string; status?: string }[]>(qmp, 'query-block-jobs');
  const job = jobs.find((j) => j.device === id);
  if (job) {
    if (job.status !== 'concluded') await exec(qmp, 'block-job-cancel', { device: id, force: true }).catch(() => undefined);
    const deadline = Date.now() + QMP_TIMEOUT_MS;
    for (;;) {
      const j = (await exec<{ device: string; status?: string }[]>(qmp, 'query-block-jobs')).find((x) => x.device === id);
      if (!j) break;
      if (j.status === 'concluded' || j.status === 'null') await exec(qmp, 'job-dismiss', { id }).catch(() => undefined);
      if (Date.now() > deadline) throw new Error('the backup job did not end');
      await sleep(POLL_MS / 5);
    }
  }
  if ((await nodeSizes(qmp)).has(id)) await exec(qmp, 'blockdev-del', { 'node-name': id });
  await exec(qmp, 'object-del', { id }).catch(() => undefined);
}

/** Source: the end of a warm copy (done or cancelled): the round's nodes and the bitmap go. */
export async function endTracking(qmp: Qmp, volume: string): Promise<void> {
  await cleanRound(qmp, volume).catch(() => undefined);
  await exec(qmp, 'block-dirty-bitmap-remove', { node: blockNodeNames(volume).format, name: bitmapName(volume) }).catch(() => undefined);
}

async function nodeSizes(qmp: Qmp): Promise<Map<string, number>> {
  const nodes = await exec<{ 'node-name': string; image?: { 'virtual-size'?: number } }[]>(qmp, 'query-named-block-nodes', { flat: true });
  return new Map(nodes.map((n) => [n['node-name'], n.image?.['virtual-size'] ?? -1]));
}

function exec<T = unknown>(qmp: Qmp, command: string, args?: Record<string, unknown>): Promise<T> {
  return qmp.execute<T>(command, args, { timeoutMs: QMP_TIMEOUT_MS });
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
