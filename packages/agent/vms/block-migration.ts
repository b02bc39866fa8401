/**
 * Node-local disks in a live migration (docs/migration.md, "Local disks"), as libvirt and
 * Proxmox do it with QMP: the target makes each disk blank (same virtual size) at a path it
 * derives itself and exports it writable over NBD from its incoming QEMU; the source mirrors
 * each disk into that export (`blockdev-mirror`) while the guest runs, migrates the memory once
 * every mirror is READY, and at the switch-over (`pause-before-switchover`: the guest is paused,
 * its devices not yet handed over) ends the mirrors, which copies what is left, so the target's
 * copy is the disk the guest stops with. Moving disks: local-pool claims (a full copy),
 * emptyDisks (full), containerDisk and ephemeral overlays (only the overlay: the target makes
 * the same base itself: a containerDisk pulled by the digest the source recorded, so a tag moved
 * since cannot give the target other bytes under the guest's overlay).
 */
import { readdir, readFile, readlink, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { V1VirtualMachineInstanceSpec } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { IMAGE_DIGEST_RE, parseQuantity, storage } from '@vessel/api';
import { blockNodeNames } from '../qemu/argv.ts';
import type { QmpClient } from '../qmp/client.ts';
import * as qemuImg from '../storage/qemu-img.ts';

/** The VMI annotation where the target publishes its NBD server: `{"migrationUid", "address"}` (migrationState's unknown fields are pruned). */
export const NBD_ANNOTATION = 'vessel.io/migration-nbd';
/**
 * The VMI annotation where the node that pulled its containerDisks records each one's manifest
 * digest (`{"<volume>": "sha256:..."}`): a migration's target pulls that digest, not the tag.
 * **Deviation:** KubeVirt takes the digest from the source pod's containerStatuses (imageID);
 * Vessel has no pods, and the API prunes unknown status fields.
 */
export const DIGESTS_ANNOTATION = 'vessel.io/containerdisk-digests';
/** Prefix of the source's mirror job ids and NBD client node names (a stateless clean-up finds them by it). */
const JOB_PREFIX = 'vslmig-';
const POLL_MS = 200;
/** QMP answers during a mirror may be slow (TCG on a loaded host). */
const QMP_TIMEOUT_MS = 60_000;
/** How long ending the mirrors may take (the guest is paused meanwhile). */
const CONCLUDE_TIMEOUT_MS = 120_000;
/**
 * How long (s) a source's NBD client may take to connect (QEMU's `open-timeout`). QEMU 7.2 holds
 * its main loop, and so the guest, while it connects; when the TLS handshake cannot finish at
 * once, its connection thread waits for the main loop's GLib context, which never comes: a
 * deadlock that froze the guest for good (docs/migration.md). The open timer, run by the main
 * loop itself, ends the wait; the connection fails, QEMU and the guest go on.
 */
export const NBD_OPEN_TIMEOUT_S = 5;
/** Ports the target's NBD server tries (QEMU does not report the port it picked for port 0). */
const PORT_MIN = 49152;
const PORT_SPAN = 16000;

type Qmp = Pick<QmpClient, 'execute'>;

export interface MovingDisk {
  /** The volume's (and disk's) name. */
  volume: string;
  kind: 'claim' | 'emptyDisk' | 'containerDisk' | 'ephemeral';
  /** The claim of a `claim` disk. */
  claim?: string;
  /** `full`: the whole disk (the target's is blank); `top`: only the overlay, the target has the same base. */
  sync: 'full' | 'top';
  /** A containerDisk's image reference pinned to the digest the source runs (`repo[:tag]@sha256:...`): what the target pulls. */
  image?: string;
}

export interface BlockPlan {
  disks: MovingDisk[];
  /** Why volumes cannot move, one sentence each (LiveMigratable's message). */
  refused: string[];
}

/**
 * Which volumes a live migration copies and how; claims on a shared pool are opened by the
 * target as they are, cloud-init is re-made there.
 */
export function planBlockMigration(
  spec: V1VirtualMachineInstanceSpec,
  poolOfClaim: (claim: string) => { name: string; shared: boolean } | undefined,
  digests: Readonly<Record<string, string>> = {},
): BlockPlan {
  const disks: MovingDisk[] = [];
  const refused: string[] = [];
  for (const v of spec.volumes ?? []) {
    const claim = v.dataVolume?.name ?? v.persistentVolumeClaim?.claimName;
    if (claim) {
      const pool = poolOfClaim(claim);
      if (!pool) refused.push(`volume ${v.name}: the pool of claim ${claim} is not known on this node`);
      // A read-only disk cannot take the mirror's writes on the target.
      else if (!pool.shared && v.persistentVolumeClaim?.readOnly) refused.push(`volume ${v.name} is a read-only claim on the ${pool.name} pool of this node`);
      else if (!pool.shared) disks.push({ volume: v.name, kind: 'claim', claim, sync: 'full' });
    } else if (v.emptyDisk) {
      disks.push({ volume: v.name, kind: 'emptyDisk', sync: 'full' });
    } else if (v.containerDisk) {
      // The target pulls the same image, by digest: only the guest's writes (the overlay) cross.
      // A tag alone could name other bytes by then, under an overlay made for these.
      const image = pinnedImage(v.containerDisk.image, digests[v.name]);
      if (image) disks.push({ volume: v.name, kind: 'containerDisk', sync: 'top', image });
      else
        refused.push(
          `volume ${v.name}: the digest of containerDisk image ${v.containerDisk.image} is not recorded (${DIGESTS_ANNOTATION}), so the target could pull other bytes under its tag: restart the VM, or name the image by digest (@sha256:...)`,
        );
    } else if (v.ephemeral) {
      const base = v.ephemeral.persistentVolumeClaim?.claimName ?? '';
      const pool = poolOfClaim(base);
      if (!pool) refused.push(`volume ${v.name}: the pool of claim ${base} is not known on this node`);
      else if (!pool.shared) refused.push(`volume ${v.name} is an ephemeral overlay of claim ${base}, which is on the ${pool.name} pool of this node`);
      else disks.push({ volume: v.name, kind: 'ephemeral', sync: 'top' });
    } else if (!v.cloudInitNoCloud && !v.cloudInitConfigDrive) {
      refused.push(`volume ${v.name}: its type is not live-migratable yet`);
    }
  }
  return { disks, refused };
}

/**
 * The image reference a migration's target pulls: the image itself when it names a digest, else
 * the image pinned to `digest` (the one the source pulled; the tag stays for the reader, the
 * digest wins); undefined when neither.
 */
export function pinnedImage(image: string, digest: string | undefined): string | undefined {
  const at = image.lastIndexOf('@');
  if (at >= 0) return IMAGE_DIGEST_RE.test(image.slice(at + 1)) ? image : undefined;
  return digest && IMAGE_DIGEST_RE.test(digest) ? `${image}@${digest}` : undefined;
}

/** The containerDisk digests recorded on a VMI (DIGESTS_ANNOTATION); entries that are not digests are dropped. */
export function recordedDigests(annotations: Readonly<Record<string, string>> | undefined): Record<string, string> {
  let raw: unknown;
  try {
    raw = JSON.parse(annotations?.[DIGESTS_ANNOTATION] ?? '{}');
  } catch {
    return {};
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return {};
  return Object.fromEntries(Object.entries(raw).filter((e): e is [string, string] => typeof e[1] === 'string' && IMAGE_DIGEST_RE.test(e[1])));
}

/**
 * The files in the VMI's run directory (prepare.ts names them) that hold the moving disks that
 * are not claims: the emptyDisk, the overlays, a containerDisk's pulled base and its digest. The
 * source removes them once the guest runs on the target; a target whose guest did not arrive too.
 */
export function runDirDiskFiles(disks: readonly MovingDisk[]): string[] {
  return disks.flatMap((d) =>
    d.kind === 'emptyDisk'
      ? [`${d.volume}.empty.qcow2`]
      : d.kind === 'containerDisk'
        ? [`${d.volume}.overlay.qcow2`, `${d.volume}.containerdisk.qcow2`, `${d.volume}.containerdisk.digest`]
        : d.kind === 'ephemeral'
          ? [`${d.volume}.overlay.qcow2`]
          : [],
  );
}

/**
 * Source, before it sends: each moving containerDisk whose pinned digest (the VMI's record, what
 * the target pulls) is not the one this node's base came from (its digest file in `runDir`), one
 * sentence each. The record is a reserved annotation (tenants cannot write it); one that does not
 * match anyway would put the guest's overlay over other bytes on the target, so the migration fails instead.
 */
export async function pinMismatches(disks: readonly MovingDisk[], runDir: string): Promise<string[]> {
  const out: string[] = [];
  for (const d of disks) {
    if (d.kind !== 'containerDisk' || !d.image) continue;
    const pinned = d.image.slice(d.image.lastIndexOf('@') + 1);
    const here = (await readFile(join(runDir, `${d.volume}.containerdisk.digest`), 'utf8').catch(() => '')).trim();
    // No file: a base an older agent pulled, which only an image named by digest makes movable.
    if (here && here !== pinned) out.push(`volume ${d.volume}: the target would pull containerDisk digest ${pinned}, this node runs ${here}`);
  }
  return out;
}

/** A claim's size in bytes from its status.capacity (what its volume's virtual size is grown to), rounded up to a sector. */
export function claimBytes(pvc: object | undefined): number | undefined {
  const s = ((pvc as { status?: unknown } | undefined)?.status as { capacity?: { storage?: string } } | undefined)?.capacity?.storage;
  if (!s) return undefined;
  let n: number;
  try {
    n = parseQuantity(s);
  } catch {
    return undefined;
  }
  return Number.isFinite(n) && n > 0 ? Math.ceil(n / 512) * 512 : undefined;
}

export interface TargetVolume {
  volume: string;
  claim: string;
  path: string;
  size: number;
}

/**
 * The target's file of each moving claim: `file(claim)` is the path this node derives for it
 * (its pool, the claim's namespace, name and uid), `size(claim)` its virtual size.
 */
export function targetVolumes(
  disks: readonly MovingDisk[],
  file: (claim: string) => string | undefined,
  size: (claim: string) => number | undefined,
): TargetVolume[] {
  return disks
    .filter((d) => d.kind === 'claim')
    .map((d) => {
      const path = file(d.claim!);
      const bytes = size(d.claim!);
      if (!path) throw new Error(`volume ${d.volume}: claim ${d.claim} has no pool of that name on this node`);
      if (!bytes) throw new Error(`volume ${d.volume}: claim ${d.claim} has no capacity in its status`);
      return { volume: d.volume, claim: d.claim!, path, size: bytes };
    });
}

/**
 * Makes each volume blank. A file already at a volume's path is replaced only when `leftover`
 * says it is one (it returns why it is not, else undefined); without `leftover` never (it may be
 * a disk in use). The files made are pushed to `made`.
 */
export async function createTargetVolumes(
  volumes: readonly TargetVolume[],
  made: string[],
  leftover?: (v: TargetVolume) => Promise<string | undefined>,
): Promise<void> {
  for (const v of volumes) {
    if (await exists(v.path)) {
      const kept = leftover ? await leftover(v) : 'it may be in use';
      if (kept !== undefined) throw new Error(`volume ${v.volume}: a file is already at the target's path for claim ${v.claim} (${kept})`);
      // A copy from an earlier incoming migration of this claim that did not end cleanly (its agent killed).
      await rm(v.path, { force: true });
    }
    made.push(v.path);
    await qemuImg.create(v.path, { format: 'qcow2', size: v.size });
  }
}

/**
 * Why a file found at the target's path of a claim (the path holds the claim's uid: no other
 * claim derives it) is not a leftover of an earlier incoming migration, or undefined when it is:
 * it is the claim's own volume when the claim records this node and this path, and in use when
 * a QEMU (`holders`: their pids) has it open or on its command line.
 */
export function notLeftover(
  path: string,
  claim: { metadata?: { annotations?: Record<string, string> } } | undefined,
  nodeName: string,
  holders: readonly number[],
): string | undefined {
  const a = claim?.metadata?.annotations ?? {};
  if (a[storage.SELECTED_NODE] === nodeName && a[storage.VOLUME_PATH] === path) return `it is the claim's volume on ${nodeName}`;
  if (holders.length) return `QEMU process ${holders.join(', ')} uses it`;
  return undefined;
}

/**
 * The name a target keeps its copy of a claim's volume under after a post-copy that did not
 * complete (the guest may have written only there): beside the path the node derives for the
 * claim, so a later incoming migration of that claim makes its own file there and never takes
 * the kept copy for a leftover. Only a uid's own characters go into the name.
 */
export function postcopyKeptPath(path: string, migrationUid: string): string {
  const tag = migrationUid.replace(/[^A-Za-z0-9-]/g, '').slice(0, 64) || 'unknown';
  return `${path}.postcopy-${tag}`;
}

/**
 * The Warning event's message for copies a target kept after a failed post-copy: the node and
 * each claim with the kept file's name (a file name, never the host path), and what to do.
 */
export function postcopyKeptMessage(node: string, migrationUid: string, kept: readonly { claim: string; file: string }[]): string {
  const files = kept.map((k) => `claim ${k.claim}: ${k.file}`).join(', ');
  return (
    `Post-copy migration ${migrationUid} did not complete: node ${node} kept its copy of the local disk(s) (${files}), ` +
    `which may hold what the guest wrote during post-copy; the claim(s) still use the source's volume. ` +
    `Vessel does not use the kept copy and removes it when the claim is deleted (listed in the claim's annotation ${storage.POSTCOPY_KEPT}): inspect it, then delete it or copy it over the claim's volume`
  );
}

/** One copy in a claim's storage.POSTCOPY_KEPT annotation. */
export interface KeptCopy {
  node: string;
  /** The file's name in the claim's namespace directory of that node's pool. */
  file: string;
  migration: string;
}

/**
 * The claim's storage.POSTCOPY_KEPT annotation with `add` in it: entries already there stay (other
 * nodes' and earlier migrations'), one per node and file; a value that is not such a list (written
 * by hand) is replaced rather than kept half-read.
 */
export function withKeptCopies(current: string | undefined, add: readonly KeptCopy[]): string {
  let list: KeptCopy[] = [];
  try {
    const parsed: unknown = JSON.parse(current ?? '[]');
    if (Array.isArray(parsed))
      list = parsed.filter(
        (e): e is KeptCopy =>
          !!e &&
          typeof e === 'object' &&
          typeof (e as KeptCopy).node === 'string' &&
          typeof (e as KeptCopy).file === 'string' &&
          typeof (e as KeptCopy).migration === 'string',
      );
  } catch {
    // Not JSON: replaced.
  }
  for (const k of add) if (!list.some((e) => e.node === k.node && e.file === k.file)) list.push({ node: k.node, file: k.file, migration: k.migration });
  return JSON.stringify(list);
}

/** PIDs of the QEMU processes that have `path` open or name it on their command line (read from `proc`). */
export async function qemusHolding(path: string, proc = '/proc'): Promise<number[]> {
  const pids: number[] = [];
  for (const d of await readdir(proc).catch(() => [] as string[])) {
    if (!/^\d+$/.test(d)) continue;
    const cmd = await readFile(join(proc, d, 'cmdline'), 'utf8').catch(() => '');
    if (!/^(\S*\/)?qemu-system/.test(cmd)) continue;
    if (cmd.includes(path)) {
      pids.push(Number(d));
      continue;
    }
    const fds = await readdir(join(proc, d, 'fd')).catch(() => [] as string[]);
    for (const fd of fds) {
      if ((await readlink(join(proc, d, 'fd', fd)).catch(() => '')) === path) {
        pids.push(Number(d));
        break;
      }
    }
  }
  return pids;
}

/**
 * After a migration to `node`: the moving claims whose annotations do not name `node` and the
 * file `file(claim)` derives here (the target agent stopped between the switch and recording
 * them, so they still name the source, whose file is gone).
 */
export function claimsToRepair(
  disks: readonly MovingDisk[],
  claimOf: (claim: string) => { metadata?: { annotations?: Record<string, string> } } | undefined,
  file: (claim: string) => string | undefined,
  node: string,
): MovingDisk[] {
  return disks.filter((d) => {
    if (d.kind !== 'claim' || !d.claim) return false;
    const path = file(d.claim);
    const a = claimOf(d.claim)?.metadata?.annotations;
    return !!path && !!a && (a[storage.SELECTED_NODE] !== node || a[storage.VOLUME_PATH] !== path);
  });
}

export async function removeFiles(paths: readonly string[]): Promise<void> {
  for (const p of paths) await rm(p, { force: true });
}

/**
 * Target: starts QEMU's NBD server on `host` (or on the unix socket `{path}`, for a QEMU in a pod
 * namespace: migration-relay.ts) with TLS `tlsCreds` (the client certificate checked) and
 * exports each disk writable; returns the address `host:port` (or the path).
 */
export async function exportDisks(qmp: Qmp, host: string | { path: string }, disks: readonly MovingDisk[], tlsCreds?: string): Promise<string> {
  const tls = tlsCreds ? { 'tls-creds': tlsCreds } : {};
  let port = 0;
  if (typeof host !== 'string') await exec(qmp, 'nbd-server-start', { addr: { type: 'unix', data: { path: host.path } }, ...tls });
  for (let attempt = 0; typeof host === 'string'; attempt++) {
    port = PORT_MIN + Math.floor(Math.random() * PORT_SPAN);
    try {
      await exec(qmp, 'nbd-server-start', { addr: { type: 'inet', data: { host, port: String(port) } }, ...tls });
      break;
    } catch (e) {
      if (attempt >= 20 || !/in use/i.test(e instanceof Error ? e.message : String(e))) throw e;
    }
  }
  for (const d of disks) {
    // Exporting activates the node, which an incoming QEMU keeps inactive until the switch.
    await exec(qmp, 'block-export-add', {
      type: 'nbd',
      id: `${JOB_PREFIX}${d.volume}`,
      'node-name': blockNodeNames(d.volume).format,
      name: d.volume,
      writable: true,
    });
  }
  if (typeof host !== 'string') return host.path;
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** Target: the NBD server (and its exports) goes; nothing if none runs. */
export async function stopExports(qmp: Qmp): Promise<void> {
  await exec(qmp, 'nbd-server-stop').catch(() => undefined);
}

interface BlockJob {
  device: string;
  type?: string;
  status?: string;
  ready?: boolean;
  len?: number;
  offset?: number;
  error?: string;
}

/**
 * Source: an NBD client per disk to the target's export and a mirror job into it; resolves when
 * every job is READY (the target has the whole disk and follows its writes). `stop()` true gives
 * up (an abort). Throws what fails; the caller then runs cancelMirrors.
 */
export async function startMirrors(
  qmp: Qmp,
  disks: readonly MovingDisk[],
  address: string | { path: string },
  opts: {
    tlsCreds?: string;
    tlsHostname?: string;
    speed?: number;
    stop?: () => boolean;
  } = {},
): Promise<void> {
  // A unix path: the source relay's socket (migration-relay.ts), for a QEMU in a pod namespace.
  const m = typeof address === 'string' ? /^\[?([^\]]+?)\]?:(\d+)$/.exec(address) : undefined;
  if (typeof address === 'string' && !m) throw new Error(`the target's NBD address ${JSON.stringify(address)} is not host:port`);
  const server = m ? { type: 'inet', host: m[1], port: m[2] } : { type: 'unix', path: (address as { path: string }).path };
  const sizes = await nodeSizes(qmp);
  for (const d of disks) {
    const id = `${JOB_PREFIX}${d.volume}`.slice(0, 31);
    await exec(qmp, 'blockdev-add', {
      driver: 'nbd',
      'node-name': id,
      server,
      export: d.volume,
      ...(opts.tlsCreds ? { 'tls-creds': opts.tlsCreds, 'tls-hostname': opts.tlsHostname } : {}),
      'open-timeout': NBD_OPEN_TIMEOUT_S,
    });
    const source = blockNodeNames(d.volume).format;
    const after = await nodeSizes(qmp);
    if (sizes.get(source) !== after.get(id)) {
      throw new Error(`volume ${d.volume}: the target's disk has ${after.get(id)} bytes, this one ${sizes.get(source)}`);
    }
    await exec(qmp, 'blockdev-mirror', {
      'job-id': id,
      device: source,
      target: id,
      sync: d.sync,
      'auto-dismiss': false,
      ...(opts.speed ? { speed: opts.speed } : {}),
    });
  }
  for (;;) {
    const jobs = await mirrorJobs(qmp);
    const bad = jobs.find((j) => j.status === 'concluded' || j.error);
    if (bad) throw new Error(`mirroring ${bad.device.slice(JOB_PREFIX.length)}: ${bad.error ?? 'the job ended before it was ready'}`);
    if (jobs.length < disks.length) throw new Error('a mirror job vanished');
    if (jobs.every((j) => j.ready)) return;
    if (opts.stop?.()) throw new Error('the migration was aborted while the disks were mirrored');
    await sleep(POLL_MS);
  }
}

/**
 * Source, guest paused before the switch-over: ends each READY mirror without pivoting (QEMU
 * copies what is still dirty first, so the target is the disk the guest stopped with), then
 * drops the NBD clients. Throws when a job ends in error.
 */
export async function finishMirrors(qmp: Qmp): Promise<void> {
  for (const j of await mirrorJobs(qmp)) await exec(qmp, 'block-job-cancel', { device: j.device });
  const errors = await concludeJobs(qmp);
  await dropClients(qmp);
  if (errors.length) throw new Error(`mirroring failed at the switch-over: ${errors.join('; ')}`);
}

/** Source, the migration failed or was aborted: every mirror job and NBD client of ours goes (the source's disks are untouched). */
export async function cancelMirrors(qmp: Qmp): Promise<void> {
  for (const j of await mirrorJobs(qmp).catch(() => [])) {
    if (j.status !== 'concluded') await exec(qmp, 'block-job-cancel', { device: j.device, force: true }).catch(() => undefined);
  }
  await concludeJobs(qmp).catch(() => undefined);
  await dropClients(qmp).catch(() => undefined);
}

async function mirrorJobs(qmp: Qmp): Promise<BlockJob[]> {
  return (await exec<BlockJob[]>(qmp, 'query-block-jobs')).filter((j) => j.device.startsWith(JOB_PREFIX));
}

/** Waits until every job of ours has concluded, dismisses them, and returns their errors. */
async function concludeJobs(qmp: Qmp): Promise<string[]> {
  const errors: string[] = [];
  // A target that stops answering without closing the connection must not hold the paused guest for ever.
  const deadline = Date.now() + CONCLUDE_TIMEOUT_MS;
  for (;;) {
    const jobs = await mirrorJobs(qmp);
    if (!jobs.length) return errors;
    if (Date.now() > deadline) throw new Error(`the mirror jobs did not end within ${CONCLUDE_TIMEOUT_MS / 1000} s`);
    for (const j of jobs.filter((j) => j.status === 'concluded' || j.status === 'null')) {
      if (j.error) errors.push(`${j.device.slice(JOB_PREFIX.length)}: ${j.error}`);
      await exec(qmp, 'job-dismiss', { id: j.device }).catch(() => undefined);
    }
    await sleep(POLL_MS / 4);
  }
}

async function dropClients(qmp: Qmp): Promise<void> {
  for (const name of (await nodeSizes(qmp)).keys()) if (name.startsWith(JOB_PREFIX)) await exec(qmp, 'blockdev-del', { 'node-name': name });
}

/** Virtual size of every named block node. */
async function nodeSizes(qmp: Qmp): Promise<Map<string, number>> {
  const nodes = await exec<{ 'node-name': string; image?: { 'virtual-size'?: number } }[]>(qmp, 'query-named-block-nodes', { flat: true });
  return new Map(nodes.map((n) => [n['node-name'], n.image?.['virtual-size'] ?? -1]));
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/**
 * A QMP command with a long time-out: a QEMU copying a disk under TCG on a loaded host can take
 * seconds to answer, which must not fail the migration.
 */
function exec<T = unknown>(qmp: Qmp, command: string, args?: Record<string, unknown>): Promise<T> {
  return qmp.execute<T>(command, args, { timeoutMs: QMP_TIMEOUT_MS });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
