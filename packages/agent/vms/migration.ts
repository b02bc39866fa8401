/**
 * Live migration on the node (docs/migration.md): the agent's half of a migration the control
 * plane has scheduled in the VMI's status.migrationState (KubeVirt's field names).
 *
 * Target (the node named targetNode, while status.nodeName is still the source): prepares the
 * VM as for a start (shared-pool disks, its tap and lease for the same IP and MAC), launches
 * QEMU with `-incoming defer`, has it listen on the node's fabric address (a QEMU in a pod
 * namespace, masquerade: on a unix socket behind a relay there, migration-relay.ts) and
 * publishes targetNodeAddress. Source: sees the address, writes
 * startTimestamp, sends the guest over QMP `migrate` and follows `query-migrate`. On
 * `completed` it writes the switch (status.nodeName and the node label become the target,
 * completed, endTimestamp) and then quits its QEMU, now in `postmigrate`, without that being
 * the VM stopping; the target adopts its QEMU as the VMI's. On failure or abort the source
 * keeps running (QEMU resumes a failed precopy itself), the target's QEMU is ended and
 * migrationState says failed with the reason; a post-copy that breaks after the switch-over is
 * given to QEMU's recovery for a bounded time (postcopy-recovery.ts), then loses the guest (the
 * source is not resumed, see postcopyLost).
 */
import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { V1Interface, V1VirtualMachineInstanceSpec } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { migration, refs, storage } from '@vessel/api';
import { isNotFound, isStatusError, type Client } from '@vessel/client';
import type { KubeObject, Log } from '@vessel/runtime';
import type { Accelerator } from './accel.ts';
import { faultDelay, faultPoint } from '../faults.ts';
import { lastLogLine, probe, runDirFiles, waitExit } from '../qemu/process.ts';
import { QmpClient } from '../qmp/client.ts';
import { QmpTimeoutError } from '../qmp/errors.ts';
import { containedPath, type Pool } from '../storage/pools.ts';
import { bindingOf } from './prepare.ts';
import { formatHostPort, MigrationRelay, parseHostPort, RELAY_SOCKETS } from './migration-relay.ts';
import {
  cancelMirrors,
  claimBytes,
  claimsToRepair,
  createTargetVolumes,
  exportDisks,
  finishMirrors,
  notLeftover,
  pinMismatches,
  postcopyKeptMessage,
  postcopyKeptPath,
  qemusHolding,
  NBD_ANNOTATION,
  planBlockMigration,
  recordedDigests,
  removeFiles,
  runDirDiskFiles,
  startMirrors,
  stopExports,
  targetVolumes,
  withKeptCopies,
  type MovingDisk,
} from './block-migration.ts';
import { ProgressPublisher } from './migration-progress.ts';
import { MigrationTimeline, targetSettled } from './migration-timeline.ts';
import { ARRIVAL_BOOST_MS, boost, type Unboost } from './migration-boost.ts';
import {
  applySourceSettings,
  applyTargetSettings,
  configurationOf,
  migrationDataBytes,
  MigrationWatch,
  PAUSED_MODE,
  POSTCOPY_MODE,
  transferStart,
  verdictWhenStopped,
  type Verdict,
} from './migration-settings.ts';
import {
  connectionsTo,
  dropRecoveryNote,
  RECOVERY_ANNOTATION,
  recoveryBoundMs,
  recoveryNote,
  RESUME_CONNECT_GRACE_MS,
  RESUMED_FILE,
  resumedAttempt,
  SourceRecovery,
  TARGET_GRACE_MS,
  targetRecoveryAction,
  type RecoveryNote,
} from './postcopy-recovery.ts';

const { VMIS, PVCS } = refs;
type Obj = Record<string, unknown>;
const NODE_LABEL = 'kubevirt.io/nodeName';
/** How often the source asks QEMU how the migration goes. */
const POLL_MS = 200;
/** How long a ready target waits for the source to start sending. */
const SOURCE_START_TIMEOUT_MS = 300_000;
/**
 * How long a target whose incoming migration completed waits for the source to record the
 * switch before recording it itself (the source agent down or cut off; see takeOver).
 */
const SWITCH_TAKEOVER_MS = Number(process.env.VESSEL_TEST_SWITCH_TAKEOVER_MS) || 20_000;
/** The incoming side's query-migrate statuses while the guest is arriving. */
const INCOMING = new Set(['setup', 'active', 'device', 'pre-switchover', 'postcopy-active']);
/** The id of QEMU's migration TLS credentials object. */
const TLS_CREDS = 'migration-tls';
/**
 * The source's run-directory file naming the migration (its uid) it issued `migrate-continue`
 * for: a restarted agent then knows whether a post-copy start with local disks passed the
 * switch-over (the target may have run the guest) or not (the source's memory is still the guest's).
 */
const CONTINUED_FILE = 'migration-continued';

type MigrationState = migration.MigrationState;
const migrationStateOf = migration.stateOf;
const active = migration.isActive;

export interface LiveMigratableCondition {
  type: 'LiveMigratable';
  status: 'True' | 'False';
  reason: string;
  message: string;
}

/**
 * Whether the VMI can be live-migrated: claims on a shared pool (the target opens the same
 * file), cloud-init (re-made on the target), and the node-local disks block-migration.ts
 * mirrors (local-pool claims, emptyDisk, containerDisk and ephemeral overlays). What cannot move
 * says why.
 */
export function liveMigratable(
  spec: V1VirtualMachineInstanceSpec,
  poolOfClaim: (claim: string) => { name: string; shared: boolean } | undefined,
  digests: Readonly<Record<string, string>> = {},
): LiveMigratableCondition {
  const why = planBlockMigration(spec, poolOfClaim, digests).refused;
  return why.length
    ? { type: 'LiveMigratable', status: 'False', reason: 'DisksNotLiveMigratable', message: why.join('; ') }
    : { type: 'LiveMigratable', status: 'True', reason: '', message: '' };
}

/**
 * Whether the VMI's pod-network interface has the masquerade binding: with a cluster network
 * its QEMU then runs in the VM's pod namespace (network/pod.ts), not the node's.
 */
/**
 * Whether the source QEMU's `query-migrate` status speaks of another migration than the one a
 * restarted agent resumes (`startTimestamp` written, `migrate` maybe never issued). A QEMU that
 * arrived by migration reports that incoming one as `completed` until it sends one itself; a
 * source whose outgoing migration completed is in `postmigrate`. So `completed` while the guest is
 * not in `postmigrate` (still running, or paused by its user) means this QEMU was never told to
 * migrate: the agent died before (during the disk mirror, say). Read as `completed`, the switch
 * would be recorded and the source QEMU quit while the target had no guest: the guest lost.
 */
export function staleMigrateStatus(status: string | undefined, runState: string | undefined): boolean {
  return status === 'completed' && runState !== 'postmigrate';
}

/**
 * A VMI that runs on another node after a completed migration: its moving claims recorded on
 * another node (this node's files of them are stale copies: a source agent that came back after
 * the target recorded the switch itself never removed them), and whether one still names this node
 * or nothing (the target has not recorded it yet: to be looked at again later).
 */
export function staleCopyClaims(
  disks: readonly MovingDisk[],
  claimOf: (claim: string) => { metadata?: { annotations?: Record<string, string> } } | undefined,
  node: string,
): { stale: string[]; waiting: string[] } {
  const stale: string[] = [];
  const waiting: string[] = [];
  for (const d of disks) {
    if (d.kind !== 'claim' || !d.claim) continue;
    const recorded = claimOf(d.claim)?.metadata?.annotations?.[storage.SELECTED_NODE];
    (recorded && recorded !== node ? stale : waiting).push(d.claim);
  }
  return { stale, waiting };
}

/**
 * A source agent resuming a migration after its restart (startTimestamp written): whether the
 * target may have run the guest (`switched`: post-copy past the switch-over, the source's memory
 * stale) and whether `migrate-continue` was issued. Without local disks `migrate-start-postcopy`
 * switches at once, so mode PostCopy is enough; with them QEMU waits in pre-switchover until
 * `migrate-continue`, which the agent records first (CONTINUED_FILE): a post-copy start that never
 * got past it is not switched, and a failure then resumes the source instead of losing the guest.
 */
export function resumedSourceView(mode: string | undefined, localDisks: boolean, continuedBefore: boolean): { switched: boolean; continued: boolean } {
  const postcopy = mode === 'PostCopy';
  return { switched: postcopy && (!localDisks || continuedBefore), continued: continuedBefore };
}

/** A post-copy's progress as the source follows it: bytes sent so far (`ram.transferred`) and since when that number stands. */
export interface PostcopyProgress {
  sent: number;
  since: number;
}

/**
 * One look at a post-copy past the switch-over: stalled when `ram.transferred` has not grown for
 * `stallMs` (the background copy sends until every page is over, so a live stream always grows; a
 * cut one stands still while TCP waits for minutes). Any growth starts the wait again.
 */
export function postcopyStall(prev: PostcopyProgress, sent: number, now: number, stallMs: number): { progress: PostcopyProgress; stalled: boolean } {
  if (sent !== prev.sent) return { progress: { sent, since: now }, stalled: false };
  return { progress: prev, stalled: now - prev.since >= stallMs };
}

/**
 * Whether a source whose migration failed (not switched) resumes its guest. `before` is QEMU's
 * run state when this agent took the migration up. In one agent's life it was `running` or not;
 * an agent restarted meanwhile finds the guest stopped by the migration itself (`finish-migrate`
 * in pre-switchover, `postmigrate` after a post-copy start was cancelled there, `paused` when the
 * source paused it to complete: mode Paused) and resumes it, unless its user had paused it
 * (`userPaused`: the Paused condition said PausedByUser before) — never left paused for ever.
 */
export function resumeSourceAfterFailure(before: string, restarted: boolean, userPaused: boolean, mode?: string): boolean {
  if (before === 'running') return true;
  if (!restarted) return false;
  // Paused by the migration: to finish (mode Paused) or for a post-copy from the paused source
  // that did not get past the switch-over (mode PostCopy; a user's pause is not the migration's).
  if (before === 'paused') return mode === PAUSED_MODE || (mode === POSTCOPY_MODE && !userPaused);
  return !userPaused && (before === 'finish-migrate' || before === 'postmigrate');
}

/** How many connections the QEMU of `runDir` has under way or made to `address` (in its network namespace's socket tables); 0 without that QEMU. */
export async function qemuConnectionsTo(runDir: string, address: string): Promise<number> {
  const pid = await probe(runDir);
  if (pid === undefined) return 0;
  const tables = await Promise.all(['tcp', 'tcp6'].map((f) => readFile(`/proc/${pid}/net/${f}`, 'utf8').catch(() => '')));
  return tables.reduce((n, t) => n + connectionsTo(t, address), 0);
}

export function masqueradePod(spec: Partial<V1VirtualMachineInstanceSpec> | undefined): boolean {
  const iface = podInterface(spec);
  return iface !== undefined && bindingOf(iface) === 'masquerade';
}

/** The interface on the pod network, if the VMI has one. */
export function podInterface(spec: Partial<V1VirtualMachineInstanceSpec> | undefined): V1Interface | undefined {
  const pod = (spec?.networks ?? []).find((n) => n.pod)?.name;
  return pod === undefined ? undefined : (spec?.domain?.devices?.interfaces ?? []).find((i) => i.name === pod);
}

/** The pool a claim's volume is on, from its annotation and this node's pools. */
export function claimPool(
  pvc: KubeObject | undefined,
  pools: ReadonlyMap<string, { name: string; shared: boolean }>,
): { name: string; shared: boolean } | undefined {
  const name = pvc?.metadata.annotations?.[storage.VOLUME_POOL];
  return name ? pools.get(name) : undefined;
}

/** What the VM runtime (runtime.ts) lends the migration. */
export interface MigrationHost {
  nodeName: string;
  /** This node's accelerator: under TCG a running guest pauses for its transfer (stopAndCopy). */
  accel: Accelerator;
  client: Client;
  log: Log;
  /** Where a target QEMU listens: the node's fabric address (QEMU runs in the node's namespace), else 127.0.0.1. */
  listenAddress: string;
  /**
   * Whether the VMI's QEMU runs in a pod namespace of its own (masquerade), where listenAddress
   * does not exist: its migration goes through a relay (migration-relay.ts) in `nodeNetns`.
   */
  qemuInPod(vmi: KubeObject): boolean;
  /** Announces a pod's MAC and IP on the VM network (gratuitous ARP): the guest now runs here, behind the pod's NAT. */
  announcePod?(vmi: KubeObject): Promise<void>;
  /** The node's network namespace (`ip netns` name; undefined: the agent's own). */
  nodeNetns?: string;
  /**
   * The directory of QEMU's tls-creds-x509 for a migration with `peerNode` (ca-cert.pem trusting
   * both nodes' migration CAs, server-/client-cert.pem and -key.pem); absent: plain TCP.
   */
  tlsDir?: (peerNode: string) => Promise<string>;
  /** Resolves once this node's NetworkPolicy table covers the VMI (network/policy.ts `covers`); throws when it does not in time. */
  policyCovers?(vmi: KubeObject): Promise<void>;
  /** The VMI from the runtime's cache. */
  vmi(key: string): KubeObject | undefined;
  runDirOf(vmi: KubeObject): string;
  /**
   * Prepares the VMI as for a start and launches its QEMU waiting for the guest (`-incoming
   * defer`), the claims of `volumePaths` (volume → file) on those files, the containerDisks of
   * `images` (volume → image pinned to the source's digest) pulled from there; throws what fails.
   */
  launchIncoming(vmi: KubeObject, runDir: string, volumePaths: Record<string, string>, images?: Record<string, string>): Promise<void>;
  /** This node's storage pools: where a target makes its copies of moving claims. */
  pools: ReadonlyMap<string, Pool>;
  /** A claim from the agent's cache. */
  claim(namespace: string, name: string): KubeObject | undefined;
  /** Ends the QEMU in runDir and the VMI's tap and lease on this node (no status written). */
  stopQemu(key: string, runDir: string): Promise<void>;
  /** Marks the source's session as ending on purpose: its QEMU going away is not the VM stopping. */
  releaseSource(key: string): void;
  record(vmi: KubeObject, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void>;
  scrub(message: string, namespace: string | undefined): string;
  /** Reconciles the VMI again a little later (a step that could not be recorded: the API server away). */
  requeue?(key: string): void;
}

interface Target {
  migrationUid: string;
  runDir: string;
  qmp?: QmpClient;
  /** Ended on purpose (failed, aborted, handed over): a closing QMP is not a failure. */
  ended: boolean;
  job: Promise<void>;
  /** The node-local disks coming over NBD (block-migration.ts). */
  disks: MovingDisk[];
  /** Volume files made for them, removed unless the guest arrives. */
  made: string[];
  /** The relay from the fabric to a QEMU in a pod namespace. */
  relay?: MigrationRelay;
  /** The incoming migration was seen in post-copy: the guest ran here, the volume files may hold its only newest writes. */
  postcopy?: boolean;
  /** The VMI as this target was made for it: the kept copies' event names it after it is gone (a restart after a lost post-copy deletes it quickly). */
  vmi?: KubeObject;
  /** Post-copy recovery (postcopy-recovery.ts): the last attempt this target listened for, and since when its QEMU is postcopy-paused. */
  recoveryServed?: number;
  pausedSince?: number;
}

interface QueryMigrate {
  status?: string;
  'error-desc'?: string;
  'total-time'?: number;
  downtime?: number;
  ram?: { transferred?: number; remaining?: number; total?: number; 'dirty-pages-rate'?: number };
  'socket-address'?: { type?: string; host?: string; port?: string | number }[];
}

export class VmMigrations {
  private readonly targets = new Map<string, Target>();
  /** VMI key → migrationUid of the migration this node sends. */
  private readonly sources = new Map<string, string>();
  /** VMI key → the source's send of its migration (ends after the outcome is written). */
  private readonly sendJobs = new Map<string, Promise<void>>();
  /** VMI key → when this agent issued `migrate` (the transfer time in the Migrated event). */
  private readonly started = new Map<string, number>();
  /** VMI key → puts back the priority of a source QEMU whose paused guest is being sent (migration-boost.ts). */
  private readonly boosted = new Map<string, Unboost>();
  /** VMI key → the stop of a source QEMU that has just handed its guest over (its tap and lease go with it). */
  private readonly leaving = new Map<string, Promise<void>>();
  /** VMI key → the relay of a source QEMU in a pod namespace (closed when its migration ends). */
  private readonly sourceRelays = new Map<string, MigrationRelay>();
  /** Migrations (uids) whose moving claims this node recorded as its own (or found so): repairClaims skips them. */
  private readonly claimsRecorded = new Set<string>();
  /** VMI uid/migrationUid of completed migrations away from here → looks at their stale local copies so far (removeStaleCopies). */
  private readonly copiesChecked = new Map<string, number>();
  /** Migrations (uids) whose target copies this node kept after a failed post-copy (keepPostcopyCopies): once each. */
  private readonly keptFor = new Set<string>();
  private closed = false;

  constructor(private readonly host: MigrationHost) {}

  /** VMI keys this node is a migration target for (their taps are in use). */
  targetKeys(): string[] {
    return [...this.targets.keys()];
  }

  /** Whether this node is sending the VMI's guest right now (its QEMU's STOP is the switch-over, not a pause). */
  sending(key: string): boolean {
    return this.sources.has(key);
  }

  /** The agent stops: QMP connections of targets close (their QEMUs run on, as every QEMU does). */
  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.targets.values()) {
      t.ended = true;
      await t.qmp?.close();
      await t.relay?.close();
    }
    this.targets.clear();
    for (const r of this.sourceRelays.values()) await r.close();
    this.sourceRelays.clear();
  }

  /** A VMI that is not this node's: when this node is its migration target, prepare or end the target. */
  async reconcileTarget(vmi: KubeObject): Promise<void> {
    const key = keyOf(vmi);
    const ms = migrationStateOf(vmi);
    const t = this.targets.get(key);
    const wanted = active(ms) && ms.targetNode === this.host.nodeName && !vmi.metadata.deletionTimestamp;
    if (t && (!wanted || t.migrationUid !== ms.migrationUid || ms.abortRequested)) {
      // An abort that comes after the guest arrived is the source's to settle; a failure or another migration is not.
      if (wanted && t.migrationUid === ms.migrationUid && (await this.incomingDone(t))) return;
      await this.endTarget(key, t);
      return;
    }
    if (!wanted && !t) {
      await this.removeStaleCopies(vmi);
      await this.keepLostCopies(vmi);
    }
    if (!wanted || t || ms.abortRequested || ms.targetNodeAddress) return;
    const target: Target = { migrationUid: ms.migrationUid, runDir: this.host.runDirOf(vmi), ended: false, job: Promise.resolve(), disks: [], made: [], vmi };
    this.targets.set(key, target);
    target.job = this.prepareTarget(vmi, target).catch((e: unknown) => this.host.log(`migration: ${key}: ${e instanceof Error ? e.message : e}`));
  }

  /**
   * At agent start, a QEMU found for a VMI that runs on another node: kept (and followed as this
   * node's target) when it is this node's migration target and the guest has arrived in it (the
   * source records the switch next); false: it is to be stopped (its migration fails).
   */
  async arrived(vmi: KubeObject, runDir: string): Promise<boolean> {
    const ms = migrationStateOf(vmi);
    if (!active(ms) || ms.targetNode !== this.host.nodeName || ms.abortRequested) return false;
    const qmp = await QmpClient.connect(runDirFiles(runDir).qmp, { timeoutMs: 10_000 }).catch(() => undefined);
    const info = await qmp?.execute<QueryMigrate>('query-migrate').catch(() => undefined);
    // Listening (QEMU 7.2 gives no status then, only the address) or arriving (the source sends):
    // kept and followed, as stopping it could lose a guest the source has just handed over.
    const listening = !info?.status && !!info?.['socket-address']?.length;
    // A post-copy waiting for its recovery (postcopy-paused, -recover) runs the guest here: kept too.
    const arriving = (listening || INCOMING.has(info?.status ?? '') || !!info?.status?.startsWith('postcopy')) && !!ms.targetNodeAddress;
    if (!qmp || (info?.status !== 'completed' && !arriving)) {
      this.host.log(
        `migration: ${keyOf(vmi)}: the target QEMU found at start is not receiving (${info ? (info.status ?? 'not listening') : 'no answer'}): stopping it`,
      );
      await qmp?.close();
      return false;
    }
    const disks = this.blockPlan(vmi).disks;
    // The copies the agent before this one made: removed if the guest does not arrive, kept under
    // their post-copy name if it ran here (endTarget), as for a target this agent prepared.
    const made: string[] = [];
    for (const path of this.claimCopies(vmi, disks)) if (await isFile(path)) made.push(path);
    const t: Target = { migrationUid: ms.migrationUid, runDir, qmp, ended: false, job: Promise.resolve(), disks, made, vmi };
    if (info?.status?.startsWith('postcopy')) t.postcopy = true;
    this.targets.set(keyOf(vmi), t);
    this.followTarget(keyOf(vmi), t, qmp);
    // Still waiting for the source: the timer the agent before this one armed went with it (a full 300 s again).
    if (info?.status !== 'completed' && !ms.startTimestamp) this.armSourceStart(keyOf(vmi), t, qmp);
    return true;
  }

  /** The VMI now runs on this node: a target QEMU of ours becomes the runtime's to follow (it attaches next). */
  async handOver(key: string): Promise<void> {
    const t = this.targets.get(key);
    if (!t) return;
    await t.job;
    t.ended = true;
    this.targets.delete(key);
    if (t.qmp && t.disks.length) await stopExports(t.qmp);
    if (t.qmp) await this.resumePaused(key, t.qmp);
    // Through a relay the source's "completed" means its bytes are in the relay, not yet in this
    // QEMU: the relay stays until QEMU has loaded the guest (or gave up).
    if (t.relay && t.qmp) await incomingEnded(t.qmp, 120_000);
    await t.qmp?.close();
    await t.relay?.close();
    const vmi = this.host.vmi(key);
    // Not waited for: the ARPs go out over three seconds, and a failure loses only the shortcut
    // (peers learn the MAC again from the guest's next reply).
    if (vmi && this.host.qemuInPod(vmi))
      void this.host.announcePod?.(vmi).then(
        () => this.host.log(`migration: ${key}: the pod's address announced`),
        (e: Error) => this.host.log(`migration: ${key}: announcing the pod's address: ${e.message}`),
      );
    faultPoint('migration:target-claims');
    // Not all recorded (the API server away for longer than the retries): repairClaims does it on a later reconcile.
    if (!vmi || !t.disks.length || (await this.claimsArrived(vmi, t.disks))) this.claimsRecorded.add(t.migrationUid);
    else this.host.requeue?.(key);
  }

  /**
   * The guest came here by a migration whose target agent stopped after the switch and before it
   * recorded the moving claims as this node's (handOver): they still name the source, whose
   * files are gone. Recorded now, once per migration, for the files that are here.
   */
  private async repairClaims(vmi: KubeObject): Promise<void> {
    const ms = migrationStateOf(vmi);
    if (!ms?.migrationUid || !ms.completed || ms.targetNode !== this.host.nodeName || this.claimsRecorded.has(ms.migrationUid)) return;
    const ns = vmi.metadata.namespace!;
    const stale = claimsToRepair(
      this.blockPlan(vmi).disks,
      (claim) => this.host.claim(ns, claim),
      (claim) => this.claimFile(ns, claim),
      this.host.nodeName,
    );
    const here: MovingDisk[] = [];
    for (const d of stale) if (await isFile(this.claimFile(ns, d.claim!)!)) here.push(d);
    if (here.length) {
      this.host.log(
        `migration: ${keyOf(vmi)}: claim(s) ${here.map((d) => d.claim).join(', ')} still name another node after the guest arrived here: recording them on ${this.host.nodeName}`,
      );
      if (!(await this.claimsArrived(vmi, here))) return this.host.requeue?.(keyOf(vmi));
    }
    this.claimsRecorded.add(ms.migrationUid);
  }

  /**
   * The guest arrived paused because the source paused it to complete (mode Paused,
   * allowWorkloadDisruption, TCG's stop-and-copy): it runs on here. A guest its user paused never
   * gets that mode. Post-copy (mode PostCopy, also from a paused source) needs nothing: QEMU 7.2
   * starts the guest at the switch-over, so QEMU says `running` by the end; should the source's
   * QEMU have finished in precopy before it took migrate-start-postcopy, the guest (running when
   * the migration began: no other gets that mode from a paused source) runs on too.
   */
  private async resumePaused(key: string, qmp: QmpClient, arrived = false): Promise<void> {
    const mode = migrationStateOf(this.host.vmi(key))?.mode;
    if (mode !== PAUSED_MODE && mode !== POSTCOPY_MODE) return;
    // At the incoming MIGRATION completed event (`arrived`) QEMU 7.2 has set the guest's run state
    // already (process_incoming_migration_bh emits it last): a guest paused for the transfer is
    // `cont`ed without a query first. Otherwise QEMU says `inmigrate` until it has loaded the
    // devices, after the source's `completed`: asked often, as the guest waits paused meanwhile.
    const known = arrived && mode === PAUSED_MODE;
    let status: { status: string } | undefined = known ? { status: 'paused' } : undefined;
    for (const until = Date.now() + 60_000; !known && Date.now() < until; await new Promise((r) => setTimeout(r, 20))) {
      status = await qmp.execute<{ status: string }>('query-status').catch(() => undefined);
      if (status?.status !== 'inmigrate') break;
    }
    if (status?.status !== 'paused') return;
    await qmp.execute('cont').catch((e: Error) => this.host.log(`migration: ${key}: resuming the guest paused to complete: ${e.message}`));
    this.host.log(`migration: ${key}: the guest paused by the source to complete runs on here`);
  }

  /** The VMI is gone: a target QEMU of ours goes too. */
  async forget(key: string): Promise<void> {
    const t = this.targets.get(key);
    if (t) await this.endTarget(key, t);
  }

  /** A VMI running on this node: when a migration of it has its target ready, send the guest. */
  async reconcileSource(vmi: KubeObject, qmp: QmpClient): Promise<void> {
    const key = keyOf(vmi);
    const ms = migrationStateOf(vmi);
    await this.repairClaims(vmi);
    if (!active(ms) || ms.sourceNode !== this.host.nodeName || this.sources.has(key)) return;
    if (ms.abortRequested) {
      // Aborted before the transfer began: nothing runs but the target, which ends itself on `failed`.
      await this.fail(key, ms.migrationUid, 'the migration was aborted before the transfer started', 'Succeeded');
      return;
    }
    if (!ms.targetNodeAddress) return;
    this.sources.set(key, ms.migrationUid);
    // QEMU's event times of this migration (migration-timeline.ts): its listener goes with the send, whichever way that ends.
    const timeline = new MigrationTimeline();
    const job = this.send(vmi, ms, qmp, timeline)
      .catch(async (e: unknown) => {
        const message = e instanceof Error ? e.message : String(e);
        this.host.log(`migration: ${key}: ${message}`);
        // This agent stops (its QMP connections close under the loop): QEMU goes on and the next agent
        // follows it. A `failed` written now would end a target that may run the guest (post-copy).
        if (this.closed) return;
        // An abort during the disk mirror ends here too: it succeeded (abortStatus is only set when one was asked for).
        // Not recorded either (the API server away): tried again later, as nothing was sent yet or QEMU goes on.
        await this.fail(key, ms.migrationUid, `source ${this.host.nodeName}: ${message}`, 'Succeeded').catch(() => this.host.requeue?.(key));
      })
      .finally(() => {
        timeline.detach();
        // Sent or resumed here: the source QEMU goes back to its weight.
        void this.boosted.get(key)?.();
        this.boosted.delete(key);
        this.sources.delete(key);
        if (this.sendJobs.get(key) === job) this.sendJobs.delete(key);
        const relay = this.sourceRelays.get(key);
        this.sourceRelays.delete(key);
        void relay?.close();
      });
    this.sendJobs.set(key, job);
  }

  /**
   * Waits (at most `timeoutMs`) until this node's sending of the VMI has ended. The runtime waits
   * for it when the source QEMU is gone, so the migration's own outcome (a lost post-copy's reason
   * and event) is written before the VMI fails, which ends the migration with a bare "no longer runs".
   */
  async sourceSettled(key: string, timeoutMs: number): Promise<void> {
    const job = this.sendJobs.get(key);
    if (!job) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([job, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }

  private async prepareTarget(vmi: KubeObject, t: Target): Promise<void> {
    const key = keyOf(vmi);
    try {
      // PreparingTarget: the migration's phase says the target is being made (as KubeVirt's targetPod does).
      await this.writeState(key, t.migrationUid, (ms) => {
        if (ms.abortRequested || ms.targetPod) return false;
        ms.targetPod = `${vmi.metadata.name}@${this.host.nodeName}`;
      });
      // The node's NetworkPolicy rules for the VM, awaited before the target says it is ready (the
      // guest must not run here unpoliced); made meanwhile.
      const policed = this.host.policyCovers?.(vmi);
      policed?.catch(() => undefined); // awaited below; this only keeps an early rejection from going unhandled
      // The guest left this node just before: its old QEMU's tap and lease go first, not after ours are made.
      await this.leaving.get(key);
      const ns = vmi.metadata.namespace!;
      const plan = this.blockPlan(vmi);
      if (plan.refused.length) throw new Error(plan.refused.join('; '));
      t.disks = plan.disks;
      // Each moving claim gets a blank volume where this node keeps that claim's file.
      const volumes = targetVolumes(
        plan.disks,
        (claim) => this.claimFile(ns, claim),
        (claim) => claimBytes(this.host.claim(ns, claim)),
      );
      for (const v of volumes) await this.poolOfClaim(ns, v.claim)?.ensureNamespaceDir(ns);
      // A file left at a path by an earlier incoming migration that did not end cleanly is replaced.
      await createTargetVolumes(volumes, t.made, async (v) =>
        notLeftover(v.path, this.host.claim(ns, v.claim), this.host.nodeName, await qemusHolding(v.path)),
      );
      await this.host.launchIncoming(
        vmi,
        t.runDir,
        Object.fromEntries(volumes.map((v) => [v.volume, v.path])),
        Object.fromEntries(plan.disks.filter((d) => d.image).map((d) => [d.volume, d.image!])),
      );
      await faultDelay('migration:target-launched');
      faultPoint('migration:target-launched');
      // Ended while QEMU was starting (an abort): the QEMU just started goes too.
      if (t.ended) return await this.host.stopQemu(key, t.runDir);
      const qmp = await QmpClient.connect(runDirFiles(t.runDir).qmp, { timeoutMs: 10_000, waitForSocket: true });
      t.qmp = qmp;
      if (t.ended) {
        await qmp.close();
        return await this.host.stopQemu(key, t.runDir);
      }
      this.followTarget(key, t, qmp);
      const ms = migrationStateOf(vmi);
      await applyTargetSettings(qmp, configurationOf(ms));
      const tls = !!this.host.tlsDir && !!ms?.sourceNode && !configurationOf(ms).disableTLS;
      if (tls) await this.useTls(key, qmp, 'server', await this.host.tlsDir!(ms.sourceNode!));
      else await qmp.execute('migrate-set-parameters', { 'tls-creds': '' });
      // The NBD exports use the stream's TLS or none: with disableTLS no credentials object is
      // made, and one left by an earlier migration into this QEMU is a stale server endpoint.
      const creds = tls ? TLS_CREDS : undefined;
      const { port, nbd } = this.host.qemuInPod(vmi) ? await this.listenInPod(t, qmp, plan.disks, creds) : await this.listenDirect(qmp, plan.disks, creds);
      await policed;
      const written = await this.writeState(
        key,
        t.migrationUid,
        (ms) => {
          if (ms.abortRequested) return false;
          ms.targetNodeAddress = `${this.host.listenAddress}:${port}`;
          ms.targetDirectMigrationNodePorts = { [String(port)]: 0 };
        },
        nbd ? { [NBD_ANNOTATION]: JSON.stringify({ migrationUid: t.migrationUid, address: nbd }) } : undefined,
      );
      if (written) this.host.log(`migration: ${key}: target ready on ${this.host.listenAddress}:${port}`);
      faultPoint('migration:target-ready');
      this.armSourceStart(key, t, qmp);
    } catch (e) {
      if (t.ended) return;
      const message = this.host.scrub(e instanceof Error ? e.message : String(e), vmi.metadata.namespace);
      // Not recorded (the API server away): this target goes and is prepared again later.
      const recorded = await this.fail(key, t.migrationUid, `target ${this.host.nodeName}: ${message}`).then(
        () => true,
        () => false,
      );
      await this.endTarget(key, t);
      if (!recorded) this.host.requeue?.(key);
    }
  }

  /** A source that never starts (its agent gone) must not keep a ready target waiting for ever. */
  private armSourceStart(key: string, t: Target, qmp: QmpClient): void {
    const timer = setTimeout(() => {
      const cur = migrationStateOf(this.host.vmi(key));
      if (t.ended || this.targets.get(key) !== t || cur?.migrationUid !== t.migrationUid || cur.startTimestamp) return;
      void this.fail(key, t.migrationUid, `the source did not start sending within ${SOURCE_START_TIMEOUT_MS / 1000} s`)
        .then(() => this.endTarget(key, t))
        .catch((e: Error) => this.host.log(`migration: ${key}: ${e.message}`));
    }, SOURCE_START_TIMEOUT_MS);
    timer.unref();
    qmp.on('close', () => clearTimeout(timer));
  }

  /**
   * The VMI runs on another node after a completed migration: this node's files of its moving
   * claims now recorded there go (a source agent that came back after the target recorded the
   * switch itself: its switchOver, which removes them, never ran). Only the path this node derives
   * for the claim's uid, never the claim's recorded volume here, never a file a QEMU holds.
   */
  private async removeStaleCopies(vmi: KubeObject): Promise<void> {
    const ms = migrationStateOf(vmi);
    const done = `${vmi.metadata.uid}/${ms?.migrationUid}`;
    const looks = this.copiesChecked.get(done) ?? 0;
    if (!ms?.migrationUid || !ms.completed || looks < 0) return;
    const ns = vmi.metadata.namespace!;
    const { stale, waiting } = staleCopyClaims(this.blockPlan(vmi).disks, (c) => this.host.claim(ns, c), this.host.nodeName);
    // Looked at again later: a file a QEMU still holds (the old source's, being stopped), or one of
    // a claim that still names this node (the target records it next: handOver, or its repair after
    // a restart, neither of which reconciles this node's view of the VMI).
    let again = false;
    for (const claim of stale) {
      const path = this.claimFile(ns, claim);
      if (!path || !(await isFile(path))) continue;
      const keep = notLeftover(path, this.host.claim(ns, claim), this.host.nodeName, await qemusHolding(path));
      if (keep) {
        if (looks === 0) this.host.log(`migration: ${ns}/${claim}: not removing ${path} yet: ${keep}`);
        again = true;
        continue;
      }
      const pool = this.poolOfClaim(ns, claim);
      const recorded = this.host.claim(ns, claim)?.metadata.annotations?.[storage.SELECTED_NODE];
      await pool
        ?.deleteVolume(path)
        .then(() => this.host.log(`migration: ${ns}/${claim}: removed ${path}, a stale copy (the claim is on ${recorded} since the migration)`))
        .catch((e: Error) => this.host.log(`migration: ${ns}/${claim}: removing the stale copy ${path}: ${e.message}`));
    }
    for (const claim of waiting) if (await isFile(this.claimFile(ns, claim) ?? '')) again = true;
    // Every 3 s (requeue), for at most ~2 min; -1: done.
    again &&= looks < 40;
    this.copiesChecked.set(done, again ? looks + 1 : -1);
    if (again) this.host.requeue?.(keyOf(vmi));
  }

  /** Target, QEMU in the node's namespace: it listens on the fabric address itself. */
  private async listenDirect(qmp: QmpClient, disks: readonly MovingDisk[], tlsCreds: string | undefined): Promise<{ port: number; nbd?: string }> {
    // Port 0: the kernel picks a free port, which QEMU then reports.
    await qmp.execute('migrate-incoming', { uri: `tcp:${this.host.listenAddress}:0` });
    const info = await qmp.execute<QueryMigrate>('query-migrate');
    const port = Number(info['socket-address']?.find((a) => a.port !== undefined)?.port);
    if (!Number.isInteger(port) || port <= 0) throw new Error(`QEMU did not say which port it listens on (${JSON.stringify(info)})`);
    // Node-local disks: exported writable over NBD (with the migration's TLS) for the source to mirror into.
    const nbd = disks.length ? await exportDisks(qmp, this.host.listenAddress, disks, tlsCreds) : undefined;
    return { port, nbd };
  }

  /**
   * Target, QEMU in a pod namespace (masquerade), where the fabric address does not exist: QEMU
   * listens on unix sockets in its run directory and a relay in the node's namespace joins the
   * fabric address to them (migration-relay.ts).
   */
  private async listenInPod(t: Target, qmp: QmpClient, disks: readonly MovingDisk[], tlsCreds: string | undefined): Promise<{ port: number; nbd?: string }> {
    const sock = (name: string) => join(t.runDir, name);
    await qmp.execute('migrate-incoming', { uri: `unix:${sock(RELAY_SOCKETS.incoming)}` });
    if (disks.length) await exportDisks(qmp, { path: sock(RELAY_SOCKETS.nbd) }, disks, tlsCreds);
    const fabric = { host: this.host.listenAddress, port: 0 };
    const t0 = Date.now();
    t.relay = await MigrationRelay.start(
      [
        { listen: fabric, connect: { path: sock(RELAY_SOCKETS.incoming) } },
        ...(disks.length ? [{ listen: fabric, connect: { path: sock(RELAY_SOCKETS.nbd) } }] : []),
      ],
      { netns: this.host.nodeNetns, log: this.host.log },
    );
    this.host.log(`migration: ${t.runDir}: relay to the pod's QEMU started in ${Date.now() - t0} ms`);
    // Ended while the relay started: it goes too (endTarget has run already).
    if (t.ended) await t.relay.close();
    return { port: t.relay.port(0), nbd: disks.length ? formatHostPort({ host: this.host.listenAddress, port: t.relay.port(1) }) : undefined };
  }

  /**
   * Source, QEMU in a pod namespace: a relay in the node's namespace listens on unix sockets in
   * its run directory and passes the stream (and the NBD clients) on to the target's addresses.
   */
  private async sourceRelay(vmi: KubeObject, ms: MigrationState, disks: readonly MovingDisk[]): Promise<{ migrate: string; nbd?: { path: string } }> {
    const key = keyOf(vmi);
    const sock = (name: string) => join(this.host.runDirOf(vmi), name);
    const nbdAddress = disks.length ? this.nbdAddress(key, ms.migrationUid!) : undefined;
    const t0 = Date.now();
    const relay = await MigrationRelay.start(
      [
        { listen: { path: sock(RELAY_SOCKETS.outgoing) }, connect: parseHostPort(ms.targetNodeAddress!) },
        ...(nbdAddress ? [{ listen: { path: sock(RELAY_SOCKETS.nbdOut) }, connect: parseHostPort(nbdAddress) }] : []),
      ],
      { netns: this.host.nodeNetns, log: this.host.log },
    );
    this.sourceRelays.set(key, relay);
    this.host.log(`migration: ${key}: relay from the pod's QEMU started in ${Date.now() - t0} ms`);
    return { migrate: `unix:${sock(RELAY_SOCKETS.outgoing)}`, nbd: nbdAddress ? { path: sock(RELAY_SOCKETS.nbdOut) } : undefined };
  }

  /** The NBD server the target published for migration `uid`; throws when it did not. */
  private nbdAddress(key: string, uid: string): string {
    const raw = this.host.vmi(key)?.metadata.annotations?.[NBD_ANNOTATION];
    const nbd = raw ? (JSON.parse(raw) as { migrationUid?: string; address?: string }) : undefined;
    if (nbd?.migrationUid !== uid || !nbd.address) throw new Error('the target did not publish its NBD server for the local disks');
    return nbd.address;
  }

  /** Whether the target QEMU has the whole guest (the incoming migration completed). */
  private async incomingDone(t: Target): Promise<boolean> {
    if (!t.qmp) return false;
    const info = await t.qmp.execute<QueryMigrate>('query-migrate').catch(() => undefined);
    return info?.status === 'completed';
  }

  private async endTarget(key: string, t: Target): Promise<void> {
    if (this.targets.get(key) === t) this.targets.delete(key);
    if (t.ended) return;
    t.ended = true;
    await t.qmp?.close();
    await t.relay?.close();
    await this.host.stopQemu(key, t.runDir);
    // A failed post-copy (the source wrote mode PostCopy before starting it): the guest may have
    // run here and written to these copies, the only ones with its last writes: kept, not removed.
    const ms = migrationStateOf(this.host.vmi(key));
    if (t.made.length && (t.postcopy || (ms?.migrationUid === t.migrationUid && ms.mode === 'PostCopy'))) {
      await this.keepPostcopyCopies(key, t.migrationUid, t.disks, t.made, t.vmi);
    } else {
      // The copies of node-local disks made for a guest that did not arrive (claims', and the run directory's).
      await removeFiles([...t.made, ...runDirDiskFiles(t.disks).map((f) => join(t.runDir, f))]).catch((e: Error) =>
        this.host.log(`migration: ${key}: removing the target's volumes: ${e.message}`),
      );
    }
    this.host.log(`migration: ${key}: target QEMU ended`);
  }

  /**
   * The claim files this node derives for the VMI's moving claims, except a claim's own volume
   * here (the claim records this node and that path): what an incoming migration makes here.
   */
  private claimCopies(vmi: KubeObject, disks: readonly MovingDisk[]): string[] {
    const ns = vmi.metadata.namespace!;
    const out: string[] = [];
    for (const d of disks) {
      const path = d.kind === 'claim' && d.claim ? this.claimFile(ns, d.claim) : undefined;
      if (path && !notLeftover(path, this.host.claim(ns, d.claim!), this.host.nodeName, [])) out.push(path);
    }
    return out;
  }

  /**
   * A post-copy to this node failed while this agent was not following it (it was down, or
   * restarted and found the target QEMU gone or not receiving): its copies are still at the
   * claims' paths, where a later incoming migration would take them for leftovers. Kept as
   * endTarget keeps them, once no QEMU holds them (the runtime stops a target QEMU it did not keep).
   */
  private async keepLostCopies(vmi: KubeObject): Promise<void> {
    const ms = migrationStateOf(vmi);
    if (!ms?.migrationUid || !ms.failed || ms.mode !== 'PostCopy' || ms.targetNode !== this.host.nodeName || this.keptFor.has(ms.migrationUid)) return;
    const disks = this.blockPlan(vmi).disks;
    const found: string[] = [];
    for (const path of this.claimCopies(vmi, disks)) {
      if (!(await isFile(path))) continue;
      if ((await qemusHolding(path)).length) return this.host.requeue?.(keyOf(vmi));
      found.push(path);
    }
    if (found.length) await this.keepPostcopyCopies(keyOf(vmi), ms.migrationUid, disks, found);
    else this.keptFor.add(ms.migrationUid);
  }

  /**
   * After a post-copy that did not complete, this node's copies of the moving claims (`paths`)
   * may hold the guest's only newest writes: renamed beside the claim's path (postcopyKeptPath),
   * never used or removed by Vessel, and named with this node in a Warning event on the VMI
   * (PostCopyDiskKept) for the admin to look at. A later incoming migration of the claim makes a
   * fresh file at the claim's path and never takes a kept copy for its leftover.
   */
  private async keepPostcopyCopies(key: string, uid: string, disks: readonly MovingDisk[], paths: readonly string[], known?: KubeObject): Promise<void> {
    if (this.keptFor.has(uid)) return;
    this.keptFor.add(uid);
    const [ns] = key.split('/');
    const kept: { claim: string; file: string }[] = [];
    for (const path of paths) {
      const claim = disks.find((d) => d.claim && this.claimFile(ns, d.claim) === path)?.claim ?? '?';
      const to = postcopyKeptPath(path, uid);
      try {
        await rename(path, to);
        kept.push({ claim, file: basename(to) });
        this.host.log(`migration: ${key}: post-copy did not complete: the target's copy of claim ${claim} kept as ${to}`);
      } catch (e) {
        this.host.log(`migration: ${key}: keeping the post-copy copy ${path}: ${e instanceof Error ? e.message : e}`);
      }
    }
    await this.listKeptCopies(ns, uid, kept);
    const cached = this.host.vmi(key);
    // The VMI this target was made for, also when it is gone or replaced by the VM's restart.
    const vmi = known && cached?.metadata.uid !== known.metadata.uid ? known : cached;
    if (!kept.length || !vmi) return;
    const message = postcopyKeptMessage(this.host.nodeName, uid, kept);
    await this.host
      .record(vmi, 'Warning', 'PostCopyDiskKept', this.host.scrub(message, ns))
      .catch((e: Error) => this.host.log(`migration: ${key}: ${e.message}`));
  }

  /**
   * Names the kept copies on their claims (storage.POSTCOPY_KEPT: node, file, migration), where a
   * user finds them after the VMI and its events are gone; the volume manager removes them with the
   * claim. Read-modify-write with the resourceVersion: two nodes may add theirs at once.
   */
  private async listKeptCopies(ns: string, uid: string, kept: readonly { claim: string; file: string }[]): Promise<void> {
    for (const claim of new Set(kept.map((k) => k.claim))) {
      if (claim === '?') continue;
      const add = kept.filter((k) => k.claim === claim).map((k) => ({ node: this.host.nodeName, file: k.file, migration: uid }));
      for (let attempt = 0; ; attempt++) {
        try {
          const pvc = (await this.host.client.get(PVCS, claim, { namespace: ns })) as KubeObject;
          const value = withKeptCopies(pvc.metadata.annotations?.[storage.POSTCOPY_KEPT], add);
          if (value === pvc.metadata.annotations?.[storage.POSTCOPY_KEPT]) break;
          const metadata = { resourceVersion: pvc.metadata.resourceVersion, annotations: { [storage.POSTCOPY_KEPT]: value } };
          await this.host.client.patch(PVCS, claim, { metadata }, { namespace: ns });
          break;
        } catch (e) {
          if (isNotFound(e) || attempt >= 10 || this.closed) {
            if (!isNotFound(e)) this.host.log(`migration: ${ns}/${claim}: listing the kept copies on the claim: ${e instanceof Error ? e.message : e}`);
            break;
          }
          await new Promise((r) => setTimeout(r, isStatusError(e, 'Conflict') ? 50 : 500 * (attempt + 1)));
        }
      }
    }
  }

  /** The source's side: migrate, follow, then hand over or report the failure. */
  private async send(vmi: KubeObject, ms: MigrationState & { migrationUid: string }, qmp: QmpClient, timeline: MigrationTimeline): Promise<void> {
    const key = keyOf(vmi);
    const uid = ms.migrationUid;
    const before = (await qmp.execute<{ status: string }>('query-status')).status;
    // startTimestamp already written when this send begins: an agent before this one started it.
    const restarted = !!ms.startTimestamp;
    const userPaused = ((vmi.status as Obj | undefined)?.conditions as { type?: string; reason?: string }[] | undefined)?.some(
      (c) => c.type === 'Paused' && c.reason === 'PausedByUser',
    );
    const continuedFile = join(this.host.runDirOf(vmi), CONTINUED_FILE);
    const disks = this.blockPlan(vmi).disks;
    const mismatch = ms.startTimestamp ? [] : await pinMismatches(disks, this.host.runDirOf(vmi));
    if (mismatch.length) throw new Error(mismatch.join('; '));
    // This node's files of the moving claims, removed once the guest runs on the target.
    const sourceFiles = this.sourceFiles(vmi, disks);
    const aborted = () => {
      const cur = migrationStateOf(this.host.vmi(key));
      return cur?.migrationUid !== uid || !!cur.abortRequested || !!cur.failed;
    };
    // Whether the source paused the guest for this migration (mode Paused).
    let paused = ms.mode === PAUSED_MODE;
    // Post-copy started from the paused source by this agent (transferStart).
    let fromPaused = false;
    if (!ms.startTimestamp) {
      await faultDelay('migration:source-start');
      faultPoint('migration:source-start');
      // Started: the migration's phase becomes Running.
      if (!(await this.writeState(key, uid, (s) => void (s.startTimestamp = new Date().toISOString())))) return;
      // Started, QEMU not yet told to migrate: a restart from here must not take its status for this migration's.
      faultPoint('migration:source-started');
      // Bandwidth, auto-converge, post-copy (migration-settings.ts). With local disks QEMU stops
      // before the switch-over, also on the way into post-copy, so the mirrors end while the guest is paused.
      const conf = configurationOf(ms);
      await applySourceSettings(qmp, conf, { localDisks: disks.length });
      await slowForTests(qmp);
      const tls = !!this.host.tlsDir && !conf.disableTLS;
      if (tls) await this.useTls(key, qmp, 'client', await this.host.tlsDir!(ms.targetNode!), ms.targetNode);
      // A QEMU that arrived over TLS keeps those parameters: plain TCP is asked for explicitly.
      else await qmp.execute('migrate-set-parameters', { 'tls-creds': '' });
      // A QEMU in a pod namespace reaches the target through a relay (migration-relay.ts).
      const via = this.host.qemuInPod(vmi) ? await this.sourceRelay(vmi, ms, disks) : undefined;
      // The NBD clients as the stream: TLS, or plain with disableTLS (as the target's exports).
      if (disks.length) await this.mirror(vmi, uid, qmp, disks, aborted, via?.nbd, tls);
      // The mirrors READY, QEMU not yet told to migrate (a crash test's step with local disks).
      if (disks.length) faultPoint('migration:source-mirrored');
      // Logged at the migration's end; not by an agent that restarted after this point.
      timeline.attach(qmp);
      const start = transferStart(this.host.accel, vmi.metadata.annotations, before === 'running', conf);
      if (start !== 'live') {
        // The mode first: a restarted agent or a failure resumes a guest paused with it; PostCopy
        // also makes a failing target keep its disk copies (endTarget). Written before the
        // `stop`, so the guest's pause holds no API write.
        await this.writeState(key, uid, (s) => void (s.mode = start === 'postcopy' ? POSTCOPY_MODE : PAUSED_MODE));
        // The transfer is the guest's pause: its QEMU runs at the agent's priority meanwhile.
        this.boosted.set(key, await boost(this.host.runDirOf(vmi)));
      }
      // Post-copy from the paused source: the mode written, the guest not yet stopped (a crash test's step).
      if (start === 'postcopy') faultPoint('migration:source-postcopy-mode');
      timeline.mark('migrate-sent');
      // `stop` and `migrate` leave together: QMP runs them in order, so the guest is paused before
      // the transfer begins without a round trip inside its pause (migration-timeline.ts: stop→setup).
      const stopped = start !== 'live' ? qmp.execute('stop') : undefined;
      const migrating = qmp.execute('migrate', { uri: via?.migrate ?? `tcp:${ms.targetNodeAddress}` });
      if (stopped) {
        try {
          await stopped;
        } catch (e) {
          // QEMU's stop has no error path; a timeout means QEMU is stuck: the transfer is not left to run live.
          migrating.catch(() => undefined);
          await qmp.execute('migrate_cancel').catch(() => undefined);
          throw e;
        }
        paused = true;
        this.host.log(`migration: ${key}: TCG: the guest pauses for the transfer (${start === 'postcopy' ? 'post-copy at once' : 'stop-and-copy'})`);
      }
      await migrating;
      // Paused and migrating in precopy, post-copy not yet asked for (a crash test's step).
      if (start === 'postcopy') faultPoint('migration:source-postcopy-start');
      // QEMU takes it once `migrate` set the migration up; it switches at its first iteration (with
      // local disks after pre-switchover, below). QEMU 7.2's target then starts the guest itself.
      if (start === 'postcopy') await qmp.execute('migrate-start-postcopy');
      fromPaused = start === 'postcopy';
      this.started.set(key, Date.now());
      this.host.log(`migration: ${key}: sending to ${ms.targetNode} (${ms.targetNodeAddress})`);
      faultPoint('migration:source-sending');
    }
    // A paused transfer the agent before started: its QEMU got the launch weight back at the
    // re-adoption (runtime.ts), so it is boosted again until this send ends.
    if (restarted && paused && !this.boosted.has(key)) this.boosted.set(key, await boost(this.host.runDirOf(vmi)));
    // After an agent restart the migration QEMU runs (or ran) is followed from where it is, unless
    // this QEMU never began it (its status an earlier incoming migration's): then it failed here.
    if (ms.startTimestamp && staleMigrateStatus((await qmp.execute<QueryMigrate>('query-migrate')).status, before)) {
      if (disks.length) await cancelMirrors(qmp);
      // A guest the migration paused (stopAndCopy) before that agent died runs on.
      if (before === 'paused' && resumeSourceAfterFailure(before, restarted, !!userPaused, ms.mode)) await qmp.execute('cont').catch(() => undefined);
      const reason = `the source agent on ${this.host.nodeName} restarted before the transfer began`;
      await this.fail(key, uid, reason);
      this.host.log(`migration: ${key}: ${reason}; the guest keeps running here`);
      return;
    }
    let cancelled = false;
    const progress = new ProgressPublisher(this.host.client, vmi.metadata.namespace!, uid, qmp, this.host.log);
    // The completion and progress timeouts (migration-settings.ts); timedOut says which one cancelled it.
    const watch = new MigrationWatch(
      configurationOf(ms),
      migrationDataBytes(vmi.spec),
      this.started.get(key) ?? (Date.parse(ms.startTimestamp ?? '') || Date.now()),
    );
    let timedOut: string | undefined;
    let postcopy = ms.mode === POSTCOPY_MODE || fromPaused;
    // A restarted agent re-issues migrate-start-postcopy once (the agent before may have stopped
    // between the mode's write and the command; QEMU takes it twice as once).
    let postcopyAsked = !restarted;
    // Whether the target may have run the guest (post-copy past the switch-over): the source's
    // memory is stale from then on and is never resumed. After an agent restart: from the mode and
    // whether that agent issued migrate-continue (resumedSourceView).
    const continuedBefore = restarted && (await readFile(continuedFile, 'utf8').catch(() => '')).trim() === uid;
    let { switched, continued } = resumedSourceView(ms.mode, disks.length > 0, continuedBefore);
    // The post-copy stream's progress (ram.transferred) and since when it has not moved.
    let stall: PostcopyProgress = { sent: -1, since: Date.now() };
    const stallMs = postcopyStallMs();
    let stalled = false;
    // A post-copy broken after the switch-over tries QEMU's recovery before the guest counts as
    // lost (postcopy-recovery.ts); not through the masquerade relay (bound 0: lost at once).
    const recoverMs = this.host.qemuInPod(vmi) ? 0 : recoveryBoundMs();
    const resumedFile = join(this.host.runDirOf(vmi), RESUMED_FILE);
    // An agent restarted during a recovery takes it up where the one before left it.
    const recovery = new SourceRecovery(
      recoverMs,
      restarted
        ? {
            note: recoveryNote(this.host.vmi(key)?.metadata.annotations, uid),
            resumed: resumedAttempt(await readFile(resumedFile, 'utf8').catch(() => ''), uid),
          }
        : undefined,
    );
    let gaveUp = false;
    // When this agent last sent `migrate resume` (a predecessor's counts as long ago).
    let resumeSentAt = 0;
    for (;;) {
      let info: QueryMigrate;
      try {
        info = await followMigrate(qmp, (m) => this.host.log(`migration: ${key}: ${m}`));
      } catch (e) {
        // The source QEMU gone (killed, crashed) after the switch-over: the pages the target lacks
        // went with it. This agent stopping closes QMP too: then QEMU goes on and the next agent follows.
        if (!switched || this.closed) throw e;
        // The QMP error names the run directory (a host path): the log has it, the reason does not.
        this.host.log(`migration: ${key}: ${e instanceof Error ? e.message : e}`);
        return this.postcopyLost(vmi, uid, qmp, `post-copy: the source QEMU on ${this.host.nodeName} is gone (its QMP connection closed)`);
      }
      const status = info.status ?? 'none';
      // Post-copy whose stream stalls (a cut link: TCP neither delivers nor fails for minutes) is
      // paused by hand, which QEMU reports as postcopy-paused below: the guest on the target waits
      // for pages that cannot come. `ram.transferred` grows while pages flow (the background copy
      // goes on until all are sent), so postcopyStallMs() without growth means the stream is stuck.
      if (switched && status === 'postcopy-active' && !stalled) {
        const seen = postcopyStall(stall, info.ram?.transferred ?? 0, Date.now(), stallMs);
        stall = seen.progress;
        if (seen.stalled) {
          this.host.log(`migration: ${key}: post-copy sent nothing for ${stallMs / 1000} s: pausing it (migrate-pause)`);
          stalled = true;
          await qmp.execute('migrate-pause').catch((e: Error) => this.host.log(`migration: ${key}: migrate-pause: ${e.message}`));
        }
      }
      // Still precopy: QEMU turns `postcopy-active` before it stops the guest and sends devices,
      // and with local disks post-copy passes pre-switchover first (until migrate-continue the
      // target has no device state). Also when the mode says PostCopy but migrate-start-postcopy
      // never reached QEMU (the agent stopped between the two): a failure then resumes the source.
      // Nor in `setup` or `none` (a restarted agent whose predecessor wrote the mode and stopped
      // before `migrate`, or while QEMU set it up): no page has gone over in post-copy yet.
      if (!continued && (status === 'active' || status === 'pre-switchover' || status === 'setup' || status === 'none')) switched = false;
      if (postcopy && !postcopyAsked && !continued && status === 'active' && !cancelled && !aborted()) {
        postcopyAsked = true;
        await qmp.execute('migrate-start-postcopy');
      }
      if (status.startsWith('postcopy')) switched = true;
      // The final figures are not waited for: the switch-over's write comes first.
      if (status === 'completed' || status === 'failed' || status === 'cancelled') {
        void progress.finish(info);
        if (timeline.listening) this.host.log(`migration: ${key}: ${timeline.line('source', `${info.ram?.transferred ?? '?'} bytes sent`)}`);
        timeline.detach();
      } else progress.tick(info);
      if (status === 'completed') return this.switchOver(vmi, uid, ms.targetNode!, info, sourceFiles, disks);
      if (status === 'pre-switchover' && !continued) {
        // The guest is paused (precopy done, or post-copy starting): the mirrors copy what is left
        // and end, then the devices go over. Only then may the target run the guest.
        faultPoint('migration:source-switchover');
        const t0 = Date.now();
        try {
          await finishMirrors(qmp);
          if (disks.length) this.host.log(`migration: ${key}: mirrors ended at the switch-over in ${Date.now() - t0} ms${postcopy ? ' (post-copy)' : ''}`);
          continued = true;
          switched = postcopy;
          // Recorded first: an agent restarted from here on knows the target may run the guest.
          await writeFile(continuedFile, uid);
          await qmp.execute('migrate-continue', { state: 'pre-switchover' });
        } catch (e) {
          this.host.log(`migration: ${key}: ${e instanceof Error ? e.message : e}; cancelling`);
          await qmp.execute('migrate_cancel').catch(() => undefined);
        }
      }
      if (switched && status.startsWith('postcopy')) {
        const note = recoveryNote(this.host.vmi(key)?.metadata.annotations, uid);
        // A resume that is not connecting (none of QEMU's sockets goes to the address: the agent
        // before died before QEMU took it, or the connect gave up) is issued again; one that hangs
        // on a cut link is left alone (a second connect would race it).
        if (
          status === 'postcopy-paused' &&
          recovery.awaitingConnect &&
          note?.address &&
          Date.now() - resumeSentAt >= RESUME_CONNECT_GRACE_MS &&
          (await qemuConnectionsTo(this.host.runDirOf(vmi), note.address)) === 0
        ) {
          this.host.log(`migration: ${key}: no connect under way to ${note.address}: the post-copy's resume is sent again`);
          recovery.resumeAgain();
        }
        const step = recovery.step(status, Date.now(), note);
        if (step.action === 'recovered') {
          this.host.log(`migration: ${key}: post-copy recovered after ${step.ms} ms broken`);
          stalled = false;
          stall = { sent: -1, since: Date.now() };
        } else if (step.action === 'request') {
          this.host.log(`migration: ${key}: post-copy ${status}: asking the target to listen again (recovery attempt ${step.attempt})`);
          await this.requestRecovery(key, uid, step.attempt);
        } else if (step.action === 'resume') {
          this.host.log(`migration: ${key}: resuming the post-copy to ${step.address} (recovery attempt ${step.attempt})`);
          // Recorded first: an agent restarted from here on does not connect a second time.
          await writeFile(resumedFile, `${uid} ${step.attempt}`);
          faultPoint('migration:source-resume-recorded');
          resumeSentAt = Date.now();
          await qmp.execute('migrate', { uri: `tcp:${step.address}`, resume: true }).catch((e: Error) => {
            this.host.log(`migration: ${key}: migrate resume: ${e.message}`);
            recovery.resumeFailed();
          });
        } else if (step.action === 'give-up') gaveUp = true;
      }
      // The target's side failed the migration meanwhile (its QEMU gone): nothing is left to recover.
      const cur = migrationStateOf(this.host.vmi(key));
      const failedMeanwhile = recovery.recovering && cur?.migrationUid === uid && !!cur.failed;
      const broken = status === 'postcopy-paused' || status === 'postcopy-recover';
      if (switched && ((broken && (gaveUp || failedMeanwhile)) || status === 'failed' || status === 'cancelled' || status === 'none')) {
        const why = stalled
          ? `nothing sent for ${stallMs / 1000} s (the stream to the target stalled: link or target cut off), paused`
          : (info['error-desc'] ?? 'the stream to the target broke');
        const tried =
          !broken || recoverMs === 0 ? '' : failedMeanwhile ? '; the migration failed during the recovery' : `; not recovered within ${recoverMs / 1000} s`;
        return this.postcopyLost(vmi, uid, qmp, `post-copy ${status}: ${why}${tried}`);
      }
      if (status === 'failed' || status === 'cancelled' || status === 'none') {
        // A failed precopy leaves the source running; one paused by the switch-over attempt (a
        // cancelled post-copy start too: QEMU leaves that in postmigrate) resumes.
        // Before the mirrors go: ending them waits for requests to a dead target, the guest need not.
        const now = (await qmp.execute<{ status: string }>('query-status')).status;
        if (now !== 'running' && resumeSourceAfterFailure(before, restarted, !!userPaused, ms.mode)) {
          await qmp.execute('cont').catch(() => undefined);
          if (before !== 'running') this.host.log(`migration: ${key}: the guest the migration had stopped (${before}) when this agent started runs on`);
        }
        if (disks.length) await cancelMirrors(qmp);
        const reason = timedOut ?? (cancelled ? 'the migration was aborted' : `the migration ${status}: ${info['error-desc'] ?? 'QEMU gave no reason'}`);
        await this.fail(key, uid, reason, cancelled && !timedOut ? 'Succeeded' : undefined);
        this.host.log(`migration: ${key}: ${reason}; the guest keeps running here`);
        return;
      }
      if (!cancelled && !switched && aborted()) {
        cancelled = true;
        await qmp.execute('migrate_cancel');
      }
      const seen = cancelled ? undefined : watch.check(info, Date.now());
      // A paused guest dirties nothing: post-copy would not bring it over sooner, the timeout ends it.
      // A guest not running (paused for the transfer or by its user): post-copy would run it on the target.
      const verdict: Verdict | undefined = verdictWhenStopped(seen, before === 'running' && !paused);
      if (verdict?.action === 'cancel') {
        cancelled = true;
        timedOut = verdict.reason;
        this.host.log(`migration: ${key}: ${verdict.reason}`);
        // The reason first: the target's QEMU fails on the cut stream and would write its own.
        await this.writeState(key, uid, (s) => void (s.failureReason = verdict.reason));
        await qmp.execute('migrate_cancel');
      } else if (verdict?.action === 'pause' && before === 'running' && !paused) {
        // allowWorkloadDisruption: paused, the guest dirties nothing and the copy ends; the target
        // resumes it on arrival (it sees mode Paused), as KubeVirt's MigrationPaused mode. A guest
        // paused by its user already converges and stays paused.
        paused = true;
        this.host.log(`migration: ${key}: ${verdict.reason}`);
        await this.writeState(key, uid, (s) => void (s.mode = PAUSED_MODE));
        await qmp.execute('stop');
      } else if (verdict?.action === 'postcopy') {
        postcopy = true;
        // Without local disks QEMU switches over at once; with them at migrate-continue (above).
        switched = !disks.length;
        this.host.log(`migration: ${key}: ${verdict.reason}`);
        // The mode first: a target that fails from here on keeps its copies of the disks (endTarget).
        await this.writeState(key, uid, (s) => void (s.mode = POSTCOPY_MODE));
        await qmp.execute('migrate-start-postcopy');
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  /**
   * Post-copy broke after the switch-over (the target gone or cut off) and did not recover within
   * its bound (postcopy-recovery.ts): the guest's memory is split between the two QEMUs. The
   * guest is lost (the documented exception): the source, whose memory is stale, is never
   * resumed; it quits, so the VMI fails (QemuExited) and its VM's runStrategy decides. The disks' files stay on both nodes: the claims still name this node, whose copy is
   * the disk as the guest stopped at the switch-over; the target keeps its copy (endTarget),
   * which has what the guest wrote during post-copy.
   */
  private async postcopyLost(vmi: KubeObject, uid: string, qmp: QmpClient, why: string): Promise<void> {
    const key = keyOf(vmi);
    const reason = `${why}; the guest ran on the target and is lost (its memory is split between the nodes): the source is not resumed`;
    this.host.log(`migration: ${key}: ${reason}`);
    const pid = await probe(this.host.runDirOf(vmi));
    await this.fail(key, uid, reason);
    await this.host.record(vmi, 'Warning', 'PostCopyFailed', reason).catch((e: Error) => this.host.log(`migration: ${key}: ${e.message}`));
    await qmp.execute('quit').catch(() => undefined);
    // A safeguard: a QEMU whose QMP closed on `quit` while its cleanup waits on a stuck migration
    // thread would still hold the disks and the tap when the VM restarts. Its memory is stale and
    // its disks were flushed at the switch-over, so a kill loses nothing.
    if (pid !== undefined && !(await waitExit(pid, 3000))) {
      this.host.log(`migration: ${key}: the source QEMU (pid ${pid}) did not exit after quit: killing it`);
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone meanwhile.
      }
      await waitExit(pid, 5000);
    }
  }

  /** Source, post-copy recovery: asks the target for a new listening address (RECOVERY_ANNOTATION, attempt n, no address). */
  private async requestRecovery(key: string, uid: string, attempt: number): Promise<void> {
    const note: RecoveryNote = { migrationUid: uid, attempt };
    await this.writeState(key, uid, () => undefined, { [RECOVERY_ANNOTATION]: JSON.stringify(note) }).catch((e: Error) =>
      this.host.log(`migration: ${key}: asking for a recovery: ${e.message}`),
    );
  }

  /**
   * Target, post-copy recovery, one look at its QEMU's status: pauses a QEMU that has not seen the
   * break, listens again (`migrate-recover`, the same TLS credentials) and publishes the address
   * for the attempt the source asked for, or, past the bound, declares the guest lost. True when
   * this target ended.
   */
  private async targetRecovery(key: string, t: Target, qmp: QmpClient, status: string): Promise<boolean> {
    const now = Date.now();
    if (status === 'postcopy-paused') t.pausedSince ??= now;
    else if (status === 'postcopy-active') t.pausedSince = undefined;
    // Not through the masquerade relay: its listener is gone with the first stream's connection.
    const bound = t.relay ? 0 : recoveryBoundMs();
    const note = recoveryNote(this.host.vmi(key)?.metadata.annotations, t.migrationUid);
    const act = targetRecoveryAction(status, note, t.recoveryServed ?? 0, t.pausedSince, now, bound > 0 ? bound + TARGET_GRACE_MS : 0);
    try {
      if (act === 'lost') {
        await this.targetPostcopyLost(key, t);
        return true;
      }
      if (act === 'pause') {
        this.host.log(`migration: ${key}: the source asks for a post-copy recovery while this side still runs it: pausing it (migrate-pause)`);
        await qmp.execute('migrate-pause');
      } else if (act === 'listen') {
        await qmp.execute('migrate-recover', { uri: `tcp:${this.host.listenAddress}:0` });
        // QEMU 7.2 reports only the new listener once migrate-recover has set it up.
        const info = await qmp.execute<QueryMigrate>('query-migrate');
        const port = Number(info['socket-address']?.find((a) => a.port !== undefined)?.port);
        if (!Number.isInteger(port) || port <= 0) throw new Error(`QEMU did not say which port it listens on for the recovery (${JSON.stringify(info)})`);
        t.recoveryServed = note!.attempt;
        const address = `${this.host.listenAddress}:${port}`;
        if (await this.publishRecovery(key, t.migrationUid, note!.attempt, address))
          this.host.log(`migration: ${key}: post-copy recovery attempt ${note!.attempt}: listening on ${address}`);
      }
    } catch (e) {
      this.host.log(`migration: ${key}: post-copy recovery: ${e instanceof Error ? e.message : e}`);
    }
    return false;
  }

  /** Target: completes the source's recovery request `attempt` with its new address (only that request, only once). */
  private async publishRecovery(key: string, uid: string, attempt: number, address: string): Promise<boolean> {
    const vmi = this.host.vmi(key);
    if (!vmi) return false;
    let written = false;
    await updateVmi(this.host.client, vmi, (obj) => {
      const ms = migrationStateOf(obj);
      const note = recoveryNote(obj.metadata.annotations, uid);
      if (!active(ms) || ms.migrationUid !== uid || note?.attempt !== attempt || note.address) return false;
      obj.metadata.annotations = { ...obj.metadata.annotations, [RECOVERY_ANNOTATION]: JSON.stringify({ ...note, address }) };
      written = true;
    });
    return written;
  }

  /**
   * TLS on the migration stream (KubeVirt's default): x509 credentials with the peer verified
   * (its certificate signed by its node's migration CA; the client also checks the name).
   */
  private async useTls(key: string, qmp: QmpClient, endpoint: 'server' | 'client', dir: string, hostname?: string): Promise<void> {
    const t0 = Date.now();
    // A QEMU that arrived here by an earlier migration still has that one's credentials.
    await qmp.execute('object-del', { id: TLS_CREDS }).catch(() => undefined);
    await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: TLS_CREDS, dir, endpoint, 'verify-peer': true });
    await qmp.execute('migrate-set-parameters', { 'tls-creds': TLS_CREDS, ...(hostname ? { 'tls-hostname': hostname } : {}) });
    // Said in the log: whether a stream was TLS, and how long QEMU took to set it up (a DH group generated at object-add once took > 15 s).
    this.host.log(`migration: ${key}: TLS ${endpoint} credentials set in ${Date.now() - t0} ms`);
  }

  /** The target runs the guest: the VMI says so, then the source QEMU (in postmigrate) goes. */
  private async switchOver(
    vmi: KubeObject,
    uid: string,
    target: string,
    info: QueryMigrate,
    sourceFiles: { pool: Pool; path: string }[],
    disks: readonly MovingDisk[],
  ): Promise<void> {
    const key = keyOf(vmi);
    this.host.releaseSource(key);
    this.host.log(`migration: ${key}: the transfer completed; recording the switch to ${target}`);
    await faultDelay('migration:source-completed');
    faultPoint('migration:source-completed');
    // The guest now runs only on the target: this write must happen (never a `failed` instead),
    // so it is retried until it does or the agent stops (a restarted agent writes it again).
    for (let attempt = 0; ; attempt++) {
      try {
        await updateVmi(this.host.client, vmi, (obj) => {
          const s = (obj.status ??= {}) as Obj;
          const ms = s.migrationState as MigrationState | undefined;
          // Recorded already (by the target, after SWITCH_TAKEOVER_MS): left as it is.
          if (ms?.migrationUid !== uid || (ms.completed && s.nodeName === target)) return false;
          s.migrationState = { ...ms, completed: true, endTimestamp: new Date().toISOString() };
          s.nodeName = target;
          obj.metadata.labels = { ...obj.metadata.labels, [NODE_LABEL]: target };
          dropRecoveryNote(obj.metadata);
        });
        break;
      } catch (e) {
        if (this.closed) return;
        this.host.log(`migration: ${key}: recording the switch to ${target}: ${e instanceof Error ? e.message : e}; retrying`);
        await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** attempt, 10_000)));
      }
    }
    const t0 = this.started.get(key);
    this.started.delete(key);
    const secs = t0 === undefined ? '?' : ((Date.now() - t0) / 1000).toFixed(1);
    await this.host.record(
      vmi,
      'Normal',
      'Migrated',
      `VirtualMachineInstance migrated from ${this.host.nodeName} to ${target} in ${secs} s (downtime ${info.downtime ?? '?'} ms)`,
    );
    this.host.log(`migration: ${key}: completed in ${secs} s, downtime ${info.downtime ?? '?'} ms; stopping the source QEMU`);
    const stop = this.host.stopQemu(key, this.host.runDirOf(vmi));
    this.leaving.set(key, stop);
    try {
      await stop;
    } finally {
      if (this.leaving.get(key) === stop) this.leaving.delete(key);
    }
    // The target has the node-local claims now (it records them as its own): this node's copies go.
    for (const f of sourceFiles) {
      await f.pool.deleteVolume(f.path).catch((e: Error) => this.host.log(`migration: ${key}: removing ${f.path}: ${e.message}`));
    }
    // Its emptyDisks, overlays and containerDisk bases too (the run directory stays while the VMI lives).
    const runDir = this.host.runDirOf(vmi);
    await removeFiles(runDirDiskFiles(disks).map((f) => join(runDir, f))).catch((e: Error) =>
      this.host.log(`migration: ${key}: removing the run directory's disks: ${e.message}`),
    );
  }

  /** Which of the VMI's disks move over NBD, from this node's view of its claims and pools. */
  private blockPlan(vmi: KubeObject) {
    const ns = vmi.metadata.namespace!;
    return planBlockMigration(
      vmi.spec as V1VirtualMachineInstanceSpec,
      (claim) => claimPool(this.host.claim(ns, claim), this.host.pools),
      recordedDigests(vmi.metadata.annotations),
    );
  }

  /** The node-local pool of this node a claim's volume is in (by the pool name it records). */
  private poolOfClaim(ns: string, claim: string): Pool | undefined {
    const pool = this.host.pools.get(this.host.claim(ns, claim)?.metadata.annotations?.[storage.VOLUME_POOL] ?? '');
    return pool && !pool.shared ? pool : undefined;
  }

  /** Where this node keeps a claim's volume: derived from namespace, name and uid (never a path from an object). */
  private claimFile(ns: string, claim: string): string | undefined {
    const uid = this.host.claim(ns, claim)?.metadata.uid;
    return uid ? this.poolOfClaim(ns, claim)?.volumePath(ns, claim, uid) : undefined;
  }

  /** The source's files of the moving claims (their recorded paths, checked to be in a local pool's namespace directory here). */
  private sourceFiles(vmi: KubeObject, disks: readonly MovingDisk[]): { pool: Pool; path: string }[] {
    const ns = vmi.metadata.namespace!;
    const out: { pool: Pool; path: string }[] = [];
    for (const d of disks) {
      const recorded = d.claim ? this.host.claim(ns, d.claim)?.metadata.annotations?.[storage.VOLUME_PATH] : undefined;
      if (!recorded) continue;
      try {
        const found = containedPath(this.host.pools.values(), ns, recorded, storage.VOLUME_PATH);
        if (!found.pool.shared) out.push(found);
      } catch {
        // Not a file of this node: nothing to remove here.
      }
    }
    return out;
  }

  /** Source: mirrors the node-local disks into the target's NBD exports until all are READY; on failure nothing is left running. */
  private async mirror(
    vmi: KubeObject,
    uid: string,
    qmp: QmpClient,
    disks: readonly MovingDisk[],
    aborted: () => boolean,
    via: { path: string } | undefined,
    tls: boolean,
  ): Promise<void> {
    const key = keyOf(vmi);
    const address = via ?? this.nbdAddress(key, uid);
    const t0 = Date.now();
    this.host.log(`migration: ${key}: mirroring ${disks.length} local disk(s) to the target`);
    try {
      await startMirrors(qmp, disks, address, {
        tlsCreds: tls ? TLS_CREDS : undefined,
        tlsHostname: migrationStateOf(vmi)?.targetNode,
        // A test knob: a slow mirror, to fail a migration in the middle of it.
        speed: Number(process.env.VESSEL_TEST_MIRROR_BYTES_PER_SEC ?? 0) || undefined,
        stop: aborted,
      });
    } catch (e) {
      await cancelMirrors(qmp);
      throw e;
    }
    this.host.log(`migration: ${key}: ${disks.length} local disk(s) mirrored to the target in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }

  /**
   * Target, the guest arrived: the moving claims are this node's (their volume files are the copies
   * made here). False when one could not be recorded (a claim deleted meanwhile counts as done).
   */
  private async claimsArrived(vmi: KubeObject, disks: readonly MovingDisk[]): Promise<boolean> {
    const ns = vmi.metadata.namespace!;
    let all = true;
    for (const d of disks) {
      const path = d.claim ? this.claimFile(ns, d.claim) : undefined;
      if (!path) continue;
      const annotations = { [storage.SELECTED_NODE]: this.host.nodeName, [storage.VOLUME_PATH]: path };
      for (let attempt = 0; ; attempt++) {
        try {
          await this.host.client.patch(PVCS, d.claim!, { metadata: { annotations } }, { namespace: ns });
          break;
        } catch (e) {
          if (isNotFound(e) || attempt >= 10 || this.closed) {
            this.host.log(`migration: ${ns}/${d.claim}: recording the claim on ${this.host.nodeName}: ${e instanceof Error ? e.message : e}`);
            if (!isNotFound(e)) all = false;
            break;
          }
          await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
        }
      }
    }
    return all;
  }

  /**
   * Follows a target QEMU: one that exits fails the migration; once the guest has arrived
   * (query-migrate completed) and the source has not recorded the switch within
   * SWITCH_TAKEOVER_MS, this node records it (takeOver).
   */
  private followTarget(key: string, t: Target, qmp: QmpClient): void {
    qmp.on('close', () => {
      if (t.ended) return;
      void (async () => {
        const why = `target QEMU on ${this.host.nodeName} exited: ${await lastLogLine(t.runDir)}`;
        await this.fail(key, t.migrationUid, why);
        await this.endTarget(key, t);
      })().catch((e: Error) => this.host.log(`migration: ${key}: ${e.message}`));
    });
    // A guest the source paused for the transfer runs on as soon as it has arrived, as QEMU starts
    // one that came running: at the incoming migration's end, not at the next poll below.
    const timeline = new MigrationTimeline().attach(qmp);
    let timelineLogged = false;
    // Until the guest has arrived this QEMU only receives: at the agent's priority, so a paused
    // guest's transfer is not stretched by the node's load (migration-boost.ts); its vCPUs run at
    // its own weight again from the arrival on.
    const boosted = boost(t.runDir);
    const unboost = () => void boosted.then((undo) => undo());
    // The guest arrived (QMP event, or the poll below after an agent restart): it keeps the priority
    // ARRIVAL_BOOST_MS longer to catch up (timers, queued packets). Timed from the first sighting.
    let unboostArmed = false;
    const unboostAfterArrival = () => {
      if (unboostArmed) return;
      unboostArmed = true;
      setTimeout(unboost, ARRIVAL_BOOST_MS).unref();
    };
    qmp.on('event', (ev) => {
      if (ev.event === 'MIGRATION' && ev.data.status === 'completed') unboostAfterArrival();
      if (ev.event === 'MIGRATION' && ev.data.status === 'failed') unboost();
      if (ev.event === 'MIGRATION' && ev.data.status === 'completed' && !t.ended)
        void this.resumePaused(key, qmp, true).catch((e: Error) => this.host.log(`migration: ${key}: ${e.message}`));
      // The target's half of the pause breakdown, once: the guest arrived and runs here (in post-copy
      // RESUME comes first, targetSettled), or the migration ended without it.
      if (!timelineLogged && (targetSettled(timeline.marks) || (ev.event === 'MIGRATION' && ev.data.status === 'failed'))) {
        timelineLogged = true;
        this.host.log(`migration: ${key}: ${timeline.line('target')}`);
        timeline.detach();
      }
    });
    void (async () => {
      let arrivedAt: number | undefined;
      while (!t.ended && !this.closed && this.targets.get(key) === t) {
        await new Promise((r) => setTimeout(r, 500));
        if (arrivedAt === undefined) {
          const info = await qmp.execute<QueryMigrate>('query-migrate').catch(() => undefined);
          if (info?.status?.startsWith('postcopy')) t.postcopy = true;
          // The stream from the source broke after the switch-over (its QEMU or node gone, the
          // stream cut): this QEMU waits for pages, its guest stuck, until the source's recovery
          // reconnects; past the bound the guest is lost: said here too (the source's agent may be
          // down with its node), and this QEMU ends, its copies kept (endTarget).
          if (info?.status?.startsWith('postcopy') && (await this.targetRecovery(key, t, qmp, info.status))) return;
          if (info?.status === 'completed') {
            unboostAfterArrival();
            arrivedAt = Date.now();
            await this.resumePaused(key, qmp);
          }
        } else if (Date.now() - arrivedAt >= SWITCH_TAKEOVER_MS) {
          // Tried again while it cannot be written (the API server away).
          const done = await this.takeOver(key, t).then(
            () => true,
            (e: Error) => this.host.log(`migration: ${key}: recording the switch here: ${e.message}; retrying`),
          );
          if (done) arrivedAt = Infinity;
          else await new Promise((r) => setTimeout(r, 2000));
        }
      }
      // Handed over, ended or this agent stopping: the boost ends whichever way (already, if it did).
      if (this.closed) unboost();
      else unboostAfterArrival();
    })().catch((e: Error) => this.host.log(`migration: ${key}: following the target: ${e.message}`));
  }

  /**
   * The guest runs here and the source has not said so (its agent down, or cut off from the API
   * server): this node records the switch. Safe without hearing from the source: once the
   * incoming migration completed, the source QEMU is in `postmigrate` and no agent resumes it
   * (a source resumes only a failed or cancelled migration), and the write is the one the source
   * would make. A source agent coming back finds the VMI on this node and stops its QEMU.
   */
  private async takeOver(key: string, t: Target): Promise<void> {
    const vmi = this.host.vmi(key);
    if (!vmi) return;
    let taken = false;
    await updateVmi(this.host.client, vmi, (obj) => {
      const s = (obj.status ??= {}) as Obj;
      const ms = s.migrationState as MigrationState | undefined;
      if (ms?.migrationUid !== t.migrationUid || ms.failed || (ms.completed && s.nodeName === this.host.nodeName)) return false;
      s.migrationState = { ...ms, completed: true, endTimestamp: new Date().toISOString() };
      s.nodeName = this.host.nodeName;
      obj.metadata.labels = { ...obj.metadata.labels, [NODE_LABEL]: this.host.nodeName };
      dropRecoveryNote(obj.metadata);
      taken = true;
    });
    if (!taken) return;
    const source = migrationStateOf(vmi)?.sourceNode ?? '?';
    this.host.log(`migration: ${key}: the guest arrived ${SWITCH_TAKEOVER_MS / 1000} s ago and ${source} has not recorded it: switch recorded here`);
    await this.host.record(
      vmi,
      'Normal',
      'Migrated',
      `VirtualMachineInstance migrated from ${source} to ${this.host.nodeName} (the switch recorded by the target: the source did not within ${SWITCH_TAKEOVER_MS / 1000} s)`,
    );
  }

  /** Target: its incoming post-copy paused (the source side broke): the migration fails, the target ends. */
  private async targetPostcopyLost(key: string, t: Target): Promise<void> {
    const reason =
      `post-copy postcopy-paused on the target ${this.host.nodeName}: the stream from the source broke after the switch-over; ` +
      `the guest is lost (its memory is split between the nodes): the target QEMU is ended, its disk copies kept`;
    this.host.log(`migration: ${key}: ${reason}`);
    const vmi = this.host.vmi(key);
    const cur = migrationStateOf(vmi);
    const first = cur?.migrationUid === t.migrationUid && active(cur);
    await this.fail(key, t.migrationUid, reason).catch((e: Error) => this.host.log(`migration: ${key}: ${e.message}`));
    // The event once: a source that saw it first recorded its own.
    if (vmi && first) await this.host.record(vmi, 'Warning', 'PostCopyFailed', reason).catch((e: Error) => this.host.log(`migration: ${key}: ${e.message}`));
    await this.endTarget(key, t);
  }

  /** migrationState.failed with the reason (the first one stays), when it still describes migration `uid`. */
  private async fail(key: string, uid: string, reason: string, abortStatus?: string): Promise<void> {
    await this.writeState(key, uid, (ms) => {
      ms.failed = true;
      // A reason written before the end (a timeout's, before its cancel) is the one that counts.
      ms.failureReason = ms.failureReason ?? reason;
      ms.endTimestamp = new Date().toISOString();
      if (abortStatus && ms.abortRequested) ms.abortStatus = abortStatus;
    });
  }

  /**
   * Changes the VMI's migrationState (and sets `annotations`) when it still describes the active
   * migration `uid`; false when it does not.
   */
  private async writeState(key: string, uid: string, change: (ms: MigrationState) => boolean | void, annotations?: Record<string, string>): Promise<boolean> {
    const vmi = this.host.vmi(key);
    if (!vmi) return false;
    let changed = false;
    await updateVmi(this.host.client, vmi, (obj) => {
      const s = (obj.status ??= {}) as Obj;
      const ms = { ...(s.migrationState as MigrationState | undefined) };
      if (!active(ms) || ms.migrationUid !== uid || change(ms) === false) return false;
      s.migrationState = ms;
      if (annotations) obj.metadata.annotations = { ...obj.metadata.annotations, ...annotations };
      // Ended: a post-copy recovery's note has served (postcopy-recovery.ts).
      if (ms.failed || ms.completed) dropRecoveryNote(obj.metadata);
      changed = true;
    });
    return changed;
  }
}

const keyOf = (o: KubeObject) => `${o.metadata.namespace}/${o.metadata.name}`;

/**
 * Crash tests slow the transfer down (VESSEL_TEST_MIGRATION_BANDWIDTH, bytes/s) to kill a side
 * while it runs; not a setting. The downtime allowed grows with it, or a slow transfer of a guest
 * that keeps writing would never converge.
 */
/**
 * How long a post-copy may send nothing before the source pauses it and the guest counts as lost
 * (QEMU 7.2 notices a cut link only when TCP gives up, after minutes). Long, as a false stall loses
 * a guest that was going to arrive; tests shorten it.
 */
const postcopyStallMs = (): number => Number(process.env.VESSEL_TEST_POSTCOPY_STALL_MS) || 60_000;

/** How long the source follows a QEMU whose `query-migrate` answers time out before it gives up on it. */
const FOLLOW_PATIENCE_MS = 120_000;

/**
 * The source's `query-migrate` while it follows a migration, riding out slow answers: a starved
 * QEMU (seen at load 20+) can take longer than the QMP limit (5 s) while its migration runs on,
 * and failing then would end a target that may already hold the guest. A QEMU that does not
 * answer for FOLLOW_PATIENCE_MS, or any other error, still throws.
 */
export async function followMigrate(qmp: Pick<QmpClient, 'execute'>, log: (m: string) => void, patienceMs = FOLLOW_PATIENCE_MS): Promise<QueryMigrate> {
  const t0 = Date.now();
  for (;;) {
    try {
      return await qmp.execute<QueryMigrate>('query-migrate');
    } catch (e) {
      if (!(e instanceof QmpTimeoutError) || Date.now() - t0 >= patienceMs) throw e;
      log(`query-migrate got no answer in time (${e.message}); asking again`);
    }
  }
}

/** Waits until an incoming migration is no longer in progress (completed, failed), at most `timeoutMs`. */
async function incomingEnded(qmp: QmpClient, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const info = await qmp.execute<QueryMigrate>('query-migrate').catch(() => undefined);
    if (!info || !INCOMING.has(info.status ?? '')) return;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

async function slowForTests(qmp: QmpClient): Promise<void> {
  const v = Number(process.env.VESSEL_TEST_MIGRATION_BANDWIDTH);
  if (Number.isFinite(v) && v > 0) await qmp.execute('migrate-set-parameters', { 'max-bandwidth': v, 'downtime-limit': 10_000 });
  // A slow post-copy, to break one after the switch-over (at 64 KiB/s the guest there crawled: its faulted pages wait too).
  const p = Number(process.env.VESSEL_TEST_POSTCOPY_BANDWIDTH);
  if (Number.isFinite(p) && p > 0) await qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': p });
}

/**
 * A read-modify-write of the VMI (status and labels together: VMIs have no status subresource),
 * retried on conflicts; `mutate` returns false to leave it.
 */
async function updateVmi(client: Client, vmi: KubeObject, mutate: (obj: KubeObject) => boolean | void): Promise<void> {
  const opts = { namespace: vmi.metadata.namespace };
  for (let attempt = 0; ; attempt++) {
    let fresh: KubeObject;
    try {
      fresh = structuredClone((await client.get(VMIS, vmi.metadata.name, opts)) as KubeObject);
    } catch (e) {
      if (isNotFound(e)) return;
      throw e;
    }
    if (fresh.metadata.uid !== vmi.metadata.uid || mutate(fresh) === false) return;
    try {
      await client.update(VMIS, fresh, opts);
      return;
    } catch (e) {
      if (isNotFound(e)) return;
      if (!isStatusError(e, 'Conflict') || attempt >= 20) throw e;
    }
  }
}

const isFile = (path: string): Promise<boolean> =>
  stat(path).then(
    (st) => st.isFile(),
    () => false,
  );
