/**
 * The live-migration controller (KubeVirt's migration controller, first increment; see
 * docs/migration.md). Per VMI it runs the control plane's half of a
 * VirtualMachineInstanceMigration: Pending → Scheduling → (target chosen, written to the VMI's
 * status.migrationState with its Migrating condition True) → Scheduled. From there the agents
 * drive the VMI's migrationState (the target writes targetPod as it starts preparing, then
 * targetNodeAddress, the source startTimestamp, then completed or failed) and this controller
 * mirrors it onto the migration's phase: PreparingTarget, TargetReady, Running, Succeeded,
 * Failed; once it ended, the VMI's Migrating condition turns False. Deleting a running migration sets migrationState.abortRequested, which the agents
 * act on. Work is keyed by VMI, so one VMI's migrations are decided in order, and every
 * reconcile makes at most one write. Settings (docs/migration.md "Settings"): a migration stays
 * Pending while the KubeVirt object's parallel limits are reached (a MigrationPending Event says
 * which, once per reason), and the VMI's migrationState
 * carries the effective migration configuration the agents apply.
 */
import { migration, migrationConfig, phaseOf, refs } from '@vessel/api';
import type { Client } from '@vessel/client';
import { cacheKey, Controller, EventRecorder, getCondition, setCondition, updateStatus, type Informer, type KubeObject, type Log } from '@vessel/runtime';
import { slotWait, type RunningMigration, type SlotWait, type WaitingMigration } from './migration-limits.ts';
import { migrationTargetPlacements, scheduleVmi, vmiRequests, type Requests, type SchedulingSettings, type VmiPlacementLike } from './scheduling/fit.ts';

const { NODES, VMIS, VMIMS, KUBEVIRTS, MIGRATION_POLICIES, NAMESPACES } = refs;
const WAITING_PHASES = new Set(['', 'Pending']);
type Obj = Record<string, unknown>;

/** On a VirtualMachineInstanceMigration: the node to migrate to (`vessel migrate --node`), instead of the scheduler's choice. */
export const MIGRATION_TARGET_ANNOTATION = 'vessel.io/migration-target-node';

export type MigrationPhase = 'Pending' | 'Scheduling' | 'Scheduled' | 'PreparingTarget' | 'TargetReady' | 'Running' | 'Succeeded' | 'Failed';
const FINAL_PHASES = new Set(['Succeeded', 'Failed']);
/** The phases of a migration that succeeds, in order. */
const ORDER: readonly MigrationPhase[] = ['Pending', 'Scheduling', 'Scheduled', 'PreparingTarget', 'TargetReady', 'Running', 'Succeeded'];
/** The Event reason on a migration that waits in Pending for a parallel-migration slot. */
export const MIGRATION_PENDING_REASON = 'MigrationPending';
/** The VMI's condition while a migration of it runs (True, naming it), False once it ended. */
export const MIGRATING_CONDITION = 'Migrating';

type MigrationState = migration.MigrationState;
const migrationStateOf = migration.stateOf;
const migrationActive = migration.isActive;

/** The migration phase the VMI's migrationState stands for (the agents' progress). */
export function phaseFromState(ms: MigrationState): MigrationPhase {
  if (ms.failed) return 'Failed';
  if (ms.completed) return 'Succeeded';
  if (ms.startTimestamp) return 'Running';
  if (ms.targetNodeAddress) return 'TargetReady';
  if (ms.targetPod) return 'PreparingTarget';
  return 'Scheduled';
}

const vmimPhase = (m: KubeObject): string => String((m.status as Obj | undefined)?.phase ?? '');
const vmiNameOf = (m: KubeObject): string => String((m.spec as Obj | undefined)?.vmiName ?? '');
const byVmi = (m: KubeObject): string => `${m.metadata.namespace}/${vmiNameOf(m)}`;
const VMI_INDEX = 'vmi';

export class MigrationController extends Controller {
  private readonly vmims: Informer;
  private readonly vmis: Informer;
  private readonly nodes: Informer;
  private readonly events: EventRecorder;
  private readonly kubevirts: Informer;
  private readonly policies: Informer;
  private readonly namespaces: Informer;
  /** Migrations this controller let out of Pending that its cache does not show yet (uid → source node): they hold a slot. */
  private readonly claimed = new Map<string, string>();
  /**
   * Targets this controller wrote that its cache may not show yet (migration uid → the VMI, the
   * node, its requests): a second migration chosen right after must count them, or two
   * dedicated-CPU VMIs could both be sent to a node whose pool fits one.
   */
  private readonly targeted = new Map<string, { vmiKey: string; node: string; requests: Requests; at: number }>();
  /** Why each Pending migration waits, as last recorded in its Event (migration uid → message): one Event per distinct reason, not per reconcile. */
  private readonly waitReasons = new Map<string, string>();

  constructor(
    client: Client,
    log?: Log,
    private readonly settings: SchedulingSettings = {},
  ) {
    super('migration', client, log, 1);
    this.events = new EventRecorder(client, 'virt-controller');
    // A migration or a VMI changing may free a slot: the waiting migrations are looked at again.
    this.vmims = this.inform(VMIMS, (m) => [byVmi(m), ...this.waitingKeys()]);
    this.vmims.addIndex(VMI_INDEX, (m) => [byVmi(m)]);
    this.vmis = this.inform(VMIS, (v) => [cacheKey(v), ...this.waitingKeys()]);
    this.kubevirts = this.inform(KUBEVIRTS, () => this.waitingKeys());
    this.policies = this.inform(MIGRATION_POLICIES, () => []);
    this.namespaces = this.inform(NAMESPACES, () => []);
    // A node becoming Ready may give a waiting migration its target.
    this.nodes = this.inform(NODES, () =>
      this.vmims
        .list()
        .filter((m) => ['', 'Pending', 'Scheduling'].includes(vmimPhase(m)))
        .map(byVmi),
    );
  }

  protected async reconcile(key: string): Promise<void> {
    const vmi = this.vmis.get(key);
    const migrations = this.vmims
      .byIndex(VMI_INDEX, key)
      .sort(
        (a, b) => String(a.metadata.creationTimestamp).localeCompare(String(b.metadata.creationTimestamp)) || a.metadata.name.localeCompare(b.metadata.name),
      );
    const ms = migrationStateOf(vmi);
    const current = ms?.migrationUid ? migrations.find((m) => m.metadata.uid === ms.migrationUid) : undefined;

    // 1. The migration under way: its object deleted → abort; else its phase follows the agents.
    if (vmi && ms && migrationActive(ms)) {
      if ((!current || current.metadata.deletionTimestamp) && !ms.abortRequested) {
        await this.writeVmiState(vmi, (cur) => (cur?.migrationUid === ms.migrationUid && migrationActive(cur) ? { ...cur, abortRequested: true } : undefined));
        return;
      }
      if (current && (await this.mirror(current, ms))) return;
    } else if (current && ms && !FINAL_PHASES.has(vmimPhase(current))) {
      // Ended (completed or failed): the migration's last phase.
      await this.mirror(current, ms);
      return;
    }

    // The migration the VMI's Migrating condition names has ended: the condition says so.
    if (vmi && !migrationActive(ms) && getCondition(vmi, MIGRATING_CONDITION)?.status === 'True') return this.endMigrating(vmi, ms);

    // A migration past Scheduling that the VMI no longer names (the VMI is gone, or another run took its place).
    const lost = migrations.find((m) => !FINAL_PHASES.has(vmimPhase(m)) && !['', 'Pending', 'Scheduling'].includes(vmimPhase(m)) && m !== current);
    if (lost) return this.setPhase(lost, 'Failed', `VirtualMachineInstance ${vmiNameOf(lost)} no longer runs this migration`);

    // 2. The oldest migration not yet started.
    const next = migrations.find((m) => !m.metadata.deletionTimestamp && ['', 'Pending', 'Scheduling'].includes(vmimPhase(m)));
    if (!next) return;
    const phase = vmimPhase(next);
    if (phase === '') return this.setPhase(next, 'Pending');
    const refusal = this.refusal(vmi, next, ms);
    if (refusal) {
      await this.setPhase(next, 'Failed', refusal);
      await this.events.record(next, 'Warning', 'FailedMigration', refusal);
      return;
    }
    if (phase === 'Pending') {
      // Beyond the parallel limits it stays Pending, an Event saying which; a freed slot requeues it (informers above).
      const wait = this.slotWait(next);
      if (wait) return this.recordWait(next, wait);
      this.waitReasons.delete(next.metadata.uid!);
      this.claimed.set(next.metadata.uid!, String((vmi!.status as Obj).nodeName));
      return this.setPhase(next, 'Scheduling');
    }
    const target = this.chooseTarget(vmi!, next);
    if ('refusal' in target) {
      await this.setPhase(next, 'Failed', target.refusal);
      await this.events.record(next, 'Warning', 'FailedMigration', target.refusal);
      return;
    }
    // Scheduled: the VMI names its target; the next reconcile mirrors that onto the migration.
    const source = String((vmi!.status as Obj).nodeName);
    const settings = this.migrationSettings(vmi!);
    const written = await this.writeVmiState(
      vmi!,
      (cur) =>
        migrationActive(cur) ? undefined : { migrationUid: next.metadata.uid, sourceNode: source, targetNode: target.node, mode: 'PreCopy', ...settings },
      { status: 'True', reason: 'MigrationInProgress', message: `migration ${next.metadata.name} from ${source} to ${target.node}` },
    );
    if (migrationStateOf(written)?.migrationUid === next.metadata.uid)
      this.targeted.set(next.metadata.uid!, { vmiKey: key, node: target.node, requests: vmiRequests(vmi!.spec as never, this.settings), at: Date.now() });
    await this.events.record(next, 'Normal', 'MigrationTargetChosen', `migrating ${key} from ${source} to ${target.node}`);
  }

  /** The cluster's KubeVirt object, if any. */
  private kubevirt(): KubeObject | undefined {
    return this.kubevirts.get(`${migrationConfig.KUBEVIRT_NAMESPACE}/${migrationConfig.KUBEVIRT_NAME}`);
  }

  /** The effective configuration of `vmi`'s migration (KubeVirt object, policies, namespace labels), in KubeVirt's migrationState fields. */
  private migrationSettings(vmi: KubeObject): Pick<MigrationState, 'migrationConfiguration' | 'migrationPolicyName'> {
    const nsLabels = this.namespaces.get(vmi.metadata.namespace!)?.metadata.labels ?? {};
    const { configuration, policyName } = migrationConfig.effectiveMigrationConfiguration(
      this.kubevirt(),
      this.policies.list(),
      vmi.metadata.labels ?? {},
      nsLabels,
    );
    return { migrationConfiguration: configuration, ...(policyName ? { migrationPolicyName: policyName } : {}) };
  }

  /** The VMI keys with a migration waiting in Pending (or new). */
  private waitingKeys(): string[] {
    if (!this.vmims) return [];
    return [
      ...new Set(
        this.vmims
          .list()
          .filter((m) => WAITING_PHASES.has(vmimPhase(m)) && !m.metadata.deletionTimestamp)
          .map(byVmi),
      ),
    ];
  }

  /**
   * An Event on a migration kept Pending by a parallel limit, once per distinct reason (the
   * recorder alone would bump its count on every reconcile). KubeVirt only logs this, in these
   * words; an Event is what `kubectl describe` shows.
   */
  private async recordWait(m: KubeObject, wait: SlotWait): Promise<void> {
    if (wait.limit === 'notListed') return;
    const vmi = `${m.metadata.namespace}/${vmiNameOf(m)}`;
    const message =
      wait.limit === 'perNode'
        ? `Waiting to schedule target for VMI ${vmi} migration: the outbound migrations from node ${wait.node} have reached parallelOutboundMigrationsPerNode (${wait.max})`
        : `Waiting to schedule target for VMI ${vmi} migration: the running migrations have reached parallelMigrationsPerCluster (${wait.max})`;
    const uid = m.metadata.uid!;
    if (this.waitReasons.get(uid) === message) return;
    this.waitReasons.set(uid, message);
    await this.events.record(m, 'Normal', MIGRATION_PENDING_REASON, message);
  }

  /** Why migration `m` may not leave Pending under parallelMigrationsPerCluster and parallelOutboundMigrationsPerNode, or undefined when it may. */
  private slotWait(m: KubeObject): SlotWait | undefined {
    const all = this.vmims.list();
    // Claims end when the cache shows the migration out of Pending, or gone; so do recorded wait reasons.
    const present = new Map(all.map((x) => [x.metadata.uid!, vmimPhase(x)]));
    for (const uid of this.claimed.keys()) {
      const phase = present.get(uid);
      if (phase === undefined || !WAITING_PHASES.has(phase)) this.claimed.delete(uid);
    }
    for (const uid of this.waitReasons.keys()) if (!WAITING_PHASES.has(present.get(uid) ?? 'gone')) this.waitReasons.delete(uid);
    // A claim whose phase write failed: it holds its slot already.
    if (this.claimed.has(m.metadata.uid!)) return undefined;
    const conf = migrationConfig.clusterMigrationConfiguration(this.kubevirt());
    const running = new Map<string, RunningMigration>();
    const waiting = new Map<string, WaitingMigration>();
    const nodeOf = (key: string): string | undefined => {
      const v = this.vmis.get(key);
      return v && phaseOf(v) === 'Running' ? ((v.status as Obj | undefined)?.nodeName as string | undefined) : undefined;
    };
    for (const v of this.vmis.list()) {
      const ms = migrationStateOf(v);
      if (migrationActive(ms)) running.set(ms.migrationUid, { uid: ms.migrationUid, source: ms.sourceNode ?? '' });
    }
    for (const x of all) {
      const uid = x.metadata.uid!;
      const phase = vmimPhase(x);
      if (FINAL_PHASES.has(phase) || running.has(uid)) continue;
      const source = nodeOf(byVmi(x));
      if (!WAITING_PHASES.has(phase)) {
        // Scheduling: out of Pending, its VMI not yet naming it.
        running.set(uid, { uid, source: source ?? '' });
      } else if (source && !x.metadata.deletionTimestamp && !this.claimed.has(uid)) {
        const order = `${String(x.metadata.creationTimestamp)} ${x.metadata.namespace}/${x.metadata.name}`;
        // One per VMI: its later ones wait for it anyway.
        const prev = waiting.get(byVmi(x));
        if (!prev || order < prev.order) waiting.set(byVmi(x), { uid, source, order });
      }
    }
    for (const [uid, source] of this.claimed) if (!running.has(uid)) running.set(uid, { uid, source });
    return slotWait(m.metadata.uid!, [...running.values()], [...waiting.values()], {
      perCluster: conf.parallelMigrationsPerCluster,
      perNode: conf.parallelOutboundMigrationsPerNode,
    });
  }

  /** Why migration `m` of `vmi` cannot start, or undefined. */
  private refusal(vmi: KubeObject | undefined, m: KubeObject, ms: MigrationState | undefined): string | undefined {
    if (!vmi || vmi.metadata.deletionTimestamp) return `VirtualMachineInstance ${vmiNameOf(m)} does not exist`;
    if (phaseOf(vmi) !== 'Running' || !(vmi.status as Obj | undefined)?.nodeName)
      return `VirtualMachineInstance ${vmiNameOf(m)} is not Running (phase ${phaseOf(vmi) || 'none'})`;
    if (migrationActive(ms) && ms!.migrationUid !== m.metadata.uid) return `another migration of VirtualMachineInstance ${vmiNameOf(m)} is in progress`;
    const cond = getCondition(vmi, 'LiveMigratable');
    if (cond?.status !== 'True')
      return `VirtualMachineInstance ${vmiNameOf(m)} is not live-migratable: ${cond?.message || cond?.reason || 'its node has not said it is'}`;
    return undefined;
  }

  /** A node other than the source for the VMI: the named one, else the scheduler's choice. */
  private chooseTarget(vmi: KubeObject, m: KubeObject): { node: string } | { refusal: string } {
    const source = String((vmi.status as Obj).nodeName);
    const named = m.metadata.annotations?.[MIGRATION_TARGET_ANNOTATION];
    if (named === source) return { refusal: `node ${named} is where VirtualMachineInstance ${vmi.metadata.name} runs already` };
    const others = this.vmis.list().filter((v) => v.metadata.uid !== vmi.metadata.uid);
    const placed = [
      ...others
        .filter((v) => (v.status as Obj | undefined)?.nodeName && !FINAL_PHASES.has(phaseOf(v)))
        .map((v) => ({ nodeName: String((v.status as Obj).nodeName), requests: vmiRequests(v.spec as never, this.settings) })),
      // Other VMIs migrating into a node hold their room there until the switch (their target's CPUs and memory).
      ...migrationTargetPlacements(others as unknown as VmiPlacementLike[], this.settings),
      ...this.targetedNotCached(vmi),
    ];
    const nodes = this.nodes.list().filter((n) => n.metadata.name !== source && (!named || n.metadata.name === named));
    if (named && nodes.length === 0) return { refusal: `node ${named} does not exist` };
    const result = scheduleVmi({
      vmi: { metadata: { name: vmi.metadata.name, namespace: vmi.metadata.namespace! }, spec: vmi.spec as never },
      nodes: nodes as never,
      placed,
      settings: this.settings,
    });
    if (result.node === undefined) return { refusal: `no node other than ${source} can take VirtualMachineInstance ${vmi.metadata.name}: ${result.message}` };
    return { node: result.node };
  }

  /** Targets written by this controller that the cache does not show yet (the others are counted from the cache). */
  private targetedNotCached(vmi: KubeObject): { nodeName: string; requests: Requests }[] {
    const out: { nodeName: string; requests: Requests }[] = [];
    for (const [uid, t] of this.targeted) {
      const cached = this.vmis.get(t.vmiKey);
      const ms = migrationStateOf(cached);
      // Caught up (the cache names this migration or a later one), the VMI gone, or long past: forgotten.
      if (!cached || (ms?.migrationUid && ms.migrationUid !== uid) || ms?.migrationUid === uid || Date.now() - t.at > 60_000) {
        this.targeted.delete(uid);
        continue;
      }
      if (cached.metadata.uid !== vmi.metadata.uid) out.push({ nodeName: t.node, requests: t.requests });
    }
    return out;
  }

  /** Sets the migration's phase from the VMI's migrationState; false when it already says so. */
  private async mirror(m: KubeObject, ms: MigrationState): Promise<boolean> {
    const phase = phaseFromState(ms);
    const st = (m.status as Obj | undefined) ?? {};
    if (vmimPhase(m) === phase && JSON.stringify(st.migrationState) === JSON.stringify(ms)) return false;
    await this.setPhase(m, phase, ms.failed ? (ms.failureReason ?? 'the migration failed') : undefined, ms);
    if (phase !== vmimPhase(m) && (phase === 'Succeeded' || phase === 'Failed'))
      await this.events.record(
        m,
        phase === 'Failed' ? 'Warning' : 'Normal',
        phase === 'Failed' ? 'FailedMigration' : 'SuccessfulMigration',
        phase === 'Failed' ? String(ms.failureReason) : `migrated to ${ms.targetNode}`,
      );
    return true;
  }

  private async setPhase(m: KubeObject, phase: MigrationPhase, reason?: string, ms?: MigrationState): Promise<void> {
    await updateStatus(this.client, VMIMS, m.metadata.namespace, m.metadata.name, (s) => {
      if (FINAL_PHASES.has(String(s.phase ?? ''))) return false;
      if (s.phase !== phase) {
        // The agents may pass two steps between two reconciles (target ready, transfer started):
        // the phases the state shows were passed are recorded too, in order, at this time.
        const from = ORDER.indexOf(String(s.phase ?? '') as MigrationPhase);
        const to = ORDER.indexOf(phase);
        const passed = from >= 0 && to > from ? ORDER.slice(from + 1, to + 1) : [phase];
        const at = new Date().toISOString();
        s.phase = phase;
        const stamps = (s.phaseTransitionTimestamps as Obj[] | undefined) ?? [];
        s.phaseTransitionTimestamps = [...stamps, ...passed.map((p) => ({ phase: p, phaseTransitionTimestamp: at }))];
      }
      // A refused migration has no VMI state to copy: its own says why.
      if (ms) s.migrationState = ms;
      else if (reason && phase === 'Failed')
        s.migrationState = { failed: true, failureReason: reason, endTimestamp: new Date().toISOString() } satisfies MigrationState;
    });
  }

  /**
   * One write of the VMI's status.migrationState (VMIs have no status subresource: the whole
   * object), with its Migrating condition when given; `next` says undefined to leave it.
   */
  private async writeVmiState(
    vmi: KubeObject,
    next: (current: MigrationState | undefined) => MigrationState | undefined,
    migrating?: { status: 'True' | 'False'; reason: string; message: string },
  ): Promise<KubeObject | undefined> {
    return updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s, fresh) => {
      if (fresh.metadata.uid !== vmi.metadata.uid) return false;
      const n = next(s.migrationState as MigrationState | undefined);
      if (!n) return false;
      s.migrationState = n;
      if (migrating) setCondition(s, { type: MIGRATING_CONDITION, ...migrating }, false);
    });
  }

  /** The VMI's Migrating condition turns False once its migration ended (its migrationState kept as the agents left it). */
  private async endMigrating(vmi: KubeObject, ms: MigrationState | undefined): Promise<void> {
    // The True condition's message names the migration, whose object may be gone (an abort).
    const which = getCondition(vmi, MIGRATING_CONDITION)?.message || 'the migration';
    const cond = ms?.completed
      ? { status: 'False' as const, reason: 'MigrationSucceeded', message: `${which}: succeeded` }
      : { status: 'False' as const, reason: 'MigrationFailed', message: `${which}: failed: ${ms?.failureReason ?? 'the VMI no longer names it'}` };
    await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s, fresh) => {
      if (fresh.metadata.uid !== vmi.metadata.uid || migrationActive(s.migrationState as MigrationState | undefined)) return false;
      setCondition(s, { type: MIGRATING_CONDITION, ...cond }, false);
    });
  }
}
