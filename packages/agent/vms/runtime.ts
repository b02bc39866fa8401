/**
 * The agent's VM runtime (KubeVirt's virt-handler and virt-launcher in one): for every VMI
 * scheduled to this node it prepares the disks, builds the QEMU command line, starts QEMU
 * detached in the VMI's run directory (`<dataDir>/vms/<namespace>/<uid>`, see runDirOf) and follows it over
 * QMP: phase Running, the Paused condition, Succeeded when the guest powers off, Failed when
 * QEMU dies or cannot start. Deleting a VMI powers the guest down through ACPI, then kills QEMU
 * after terminationGracePeriodSeconds.
 *
 * QEMU outlives the agent. On start the agent re-adopts every QEMU it finds in its run
 * directories, so a restart never starts a guest twice, and it reconciles what happened while
 * it was away (a guest that powered off stays in QEMU's 'shutdown' state thanks to
 * -no-shutdown, so it is seen as Succeeded, not as a crash).
 *
 * Run directories are per VirtualMachine uid (a VMI without a VM: per VMI uid), never per
 * name: they hold the cloud-init ISO with its user data, serial.log and emptyDisk images, and a
 * VM of the same name in a re-created namespace must not see them. One outlives the VM's
 * VMIs (serial.log across its runs, `vessel logs` of a stopped VM) and is removed once no QEMU
 * runs there and neither the VM nor a VMI that uses it exists, and at agent start; an emptied
 * namespace directory goes with it. QEMUs started before this layout (`vms/<namespace>/<name>`)
 * are re-adopted where they run, and their directory is removed when their VMI is gone.
 */
import { readdir, rm, rmdir, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import type { V1VirtualMachineInstanceSpec } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { storage, NODE_UNRESPONSIVE, refs, phaseOf, claimNames, tryParseQuantity, migration } from '@vessel/api';
import { isNotFound, type Client } from '@vessel/client';
import { HttpError } from '@vessel/http';
import { cacheKey, Controller, EventRecorder, getCondition, setCondition, updateStatus, type Informer, type KubeObject, type Log } from '@vessel/runtime';
import { agentConnected, watchAgent } from '../qga/watch.ts';
import { mergeInterfaces, pollGuestStatus, readGuestInfo, type GuestInfoKind, type GuestStatus } from '../qga/guest-info.ts';
import { QgaClientError, QgaError } from '../qga/errors.ts';
import { MemoryDumpError, startMemoryDump } from './memory-dump.ts';
import { buildQemuArgv, VmSpecError } from '../qemu/argv.ts';
import { QemuProcessError } from '../qemu/errors.ts';
import { adopt, lastLogLine, launch, listRunDirs, probe, terminate, terminateAll, runDirFiles } from '../qemu/process.ts';
import { applyLaunchWeight, cgroupSettings, removeVmCgroup, vmCgroup, type HostPriority } from '../qemu/priority.ts';
import { QmpClient, type QmpEvent } from '../qmp/client.ts';
import { scrubPaths } from '../scrub.ts';
import { containedPath, emptyIfMissing, PathError, type Pool } from '../storage/pools.ts';
import type { Accelerator } from './accel.ts';
import { agentHotplugDeps, VolumeHotplug } from './hotplug.ts';
import { loadMemory, RESUME_MEMORY } from './memory.ts';
import type { EgressPolicy } from '../storage/egress.ts';
import { bindingOf, PrepareError, prepareVm, pulledDigests } from './prepare.ts';
import { DIGESTS_ANNOTATION, recordedDigests } from './block-migration.ts';
import { claimPool, liveMigratable, masqueradePod, podInterface, VmMigrations } from './migration.ts';
import { removeRelaySockets } from './migration-relay.ts';
import type { ClusterNetwork } from '../network/cluster.ts';
import type { SecondaryNetworks } from '../network/secondary.ts';
import { derivedMac } from '../qemu/argv/ids.ts';
import { cpuTopology } from '../qemu/argv/machine.ts';
import { Causes } from '../qemu/argv/context.ts';
import {
  assignedCpus,
  assignmentAnnotations,
  assignmentOn,
  CpuManagerError,
  handoverAnnotations,
  recordedTargetAssignment,
  TARGET_CPUS_ANNOTATION,
  targetAnnotation,
  type VmiCpuView,
  HUGEPAGE_SIZES,
  hostNumaNodes,
  hugepagePool,
  recordedAssignment,
  setAffinity,
  threadsOf,
  type CpuAssignment,
  type CpuManager,
} from './cpu-manager.ts';

type Obj = Record<string, unknown>;
type TypedVmi = { metadata: { name: string; namespace: string; uid?: string }; spec: V1VirtualMachineInstanceSpec };

/** A VMI's migrationState (KubeVirt's status.migrationState). */
const migrationStateOfVmi = (v: KubeObject) => migration.stateOf(v);
/** What the CPU manager's pure rules (cpu-manager.ts assignmentOn) read of a VMI. */
const cpuView = (v: KubeObject): VmiCpuView => ({
  annotations: v.metadata.annotations as Record<string, string> | undefined,
  nodeName: (v.status as { nodeName?: string } | undefined)?.nodeName,
  migrationState: migration.stateOf(v),
});
const { VMIS, VMS, PVCS } = refs;
/** The queue key of the run-directory collection (not a namespace/name). */
const COLLECT_KEY = 'collect-run-dirs';
/** Held on a VMI while its QEMU may still run, so the object outlives the guest. */
export const VMI_FINALIZER = 'vessel.io/qemu';
const FINAL = new Set(['Succeeded', 'Failed']);
const keyOf = (o: KubeObject) => `${o.metadata.namespace}/${o.metadata.name}`;

export interface VmRuntimeOptions {
  nodeName: string;
  dataDir: string;
  accel: Accelerator;
  pools: Map<string, Pool>;
  log?: Log;
  /** Where containerDisk images may be pulled from (storage/egress.ts). */
  egress?: EgressPolicy;
  /** How QEMU runs below the agent (qemu/priority.ts); default: at the agent's priority. */
  priority?: HostPriority;
  /**
   * The node's cluster network (network/cluster.ts), started before this runtime: bridged pod
   * interfaces get taps there, QEMU runs in its namespace, status.interfaces carry the IPs.
   */
  network?: ClusterNetwork;
  /** NetworkAttachmentDefinitions (network/secondary.ts): multus interfaces get ports on their NAD's bridge. */
  secondary?: SecondaryNetworks;
  /** Where this node's QEMU listens for an incoming live migration (the node's fabric IP); default 127.0.0.1. */
  migrationAddress?: string;
  /** The migration TLS credentials' directory for a peer node; absent: the stream is plain TCP (`--migration-tls=false`). */
  migrationTlsDir?: (peerNode: string) => Promise<string>;
  /** Resolves once the node's NetworkPolicy table covers the VMI; a migration target waits for it (network/policy.ts). */
  policyCovers?: (vmi: KubeObject) => Promise<void>;
  /** The node's CPU manager (`--reserved-cpus`, vms/cpu-manager.ts): dedicated CPUs and the shared pool's affinity. */
  cpuManager?: CpuManager;
}

/** One running QEMU followed over QMP. */
interface Session {
  uid: string;
  runDir: string;
  qmp: QmpClient;
  /** Set when we end the QEMU ourselves, so its going away is not a crash. */
  stopping: boolean;
  /** softreboot: the next guest shutdown becomes a reset. */
  rebootPending: boolean;
}

export type VmAction = 'pause' | 'unpause' | 'softreboot' | 'reset';

/**
 * The reason and message a VMI fails with when it cannot be prepared or its argv cannot be built.
 * A VmSpecError's message already lists every cause; adding them again made the VM's
 * CrashLoopBackOff message say each problem twice.
 */
export function startFailure(e: unknown): { reason: string; message: string } {
  const reason = e instanceof PrepareError ? e.reason : e instanceof VmSpecError ? e.code : 'PrepareFailed';
  return { reason, message: e instanceof Error ? e.message : String(e) };
}

/** The agent's vms directory under its data directory. */
export function vmsRootOf(dataDir: string): string {
  return join(resolve(dataDir), 'vms');
}

export class VmRuntime extends Controller {
  private readonly vmis: Informer;
  private readonly vmList: Informer;
  private readonly pvcs: Informer;
  /** VMI uid → run directory of a QEMU started before run directories were per uid (re-adopted where it runs). */
  private readonly legacyDirs = new Map<string, string>();
  /** Run directories a start is preparing right now: never collected. */
  private readonly preparing = new Set<string>();
  private readonly events: EventRecorder;
  private readonly sessions = new Map<string, Session>();
  private readonly busy = new Map<string, Promise<void>>();
  private readonly hotplug: VolumeHotplug;
  private readonly migrations: VmMigrations;
  /** Set by a self-fence (fence()): nothing is reconciled until the API server answers again. */
  private fencedReason?: string;
  /** Dedicated CPUs assigned (by VMI uid) but perhaps not yet seen in the VMI's annotations. */
  private readonly pendingCpus = new Map<string, CpuAssignment>();
  /** Affinity changes, one at a time. */
  private affinity: Promise<void> = Promise.resolve();

  constructor(
    client: Client,
    private readonly opts: VmRuntimeOptions,
  ) {
    super('vms', client, opts.log, 4);
    this.events = new EventRecorder(client, 'virt-handler', opts.nodeName);
    // Every VMI or VM change may leave a run directory unused: collected a little later, once.
    this.vmis = this.inform(VMIS, (vmi) => {
      this.queue.addAfter(COLLECT_KEY, 2000);
      return [cacheKey(vmi)];
    });
    this.vmList = this.inform(VMS, () => {
      this.queue.addAfter(COLLECT_KEY, 2000);
      return [];
    });
    // A claim becoming Bound can unblock a VMI waiting for it (to start, or to plug it in), and
    // a claim that grew changes the capacity its VMI's volumeStatus shows.
    this.pvcs = this.inform(PVCS, (pvc) =>
      this.vmis
        .list()
        .filter(
          (v) =>
            this.mine(v) &&
            !FINAL.has(phaseOf(v)) &&
            (phaseOf(v) !== 'Running' || (v.metadata.namespace === pvc.metadata.namespace && claimNames(v).includes(pvc.metadata.name))),
        )
        .map(keyOf),
    );
    this.hotplug = new VolumeHotplug(
      agentHotplugDeps({
        client,
        events: this.events,
        log: this.log,
        claim: (ns, name) => this.pvcs.get(`${ns}/${name}`),
        locate: (ns, path) => containedPath(opts.pools.values(), ns, path, storage.VOLUME_PATH).path,
        scrub: (message, ns) => this.scrub(message, ns),
      }),
    );
    this.migrations = new VmMigrations({
      nodeName: opts.nodeName,
      accel: opts.accel,
      client,
      log: this.log,
      listenAddress: opts.migrationAddress ?? '127.0.0.1',
      // Without a cluster network there is no pod: QEMU runs in the agent's namespace.
      qemuInPod: (vmi) => !!opts.network && masqueradePod(vmi.spec as V1VirtualMachineInstanceSpec),
      announcePod: async (vmi) => {
        const iface = podInterface(vmi.spec as V1VirtualMachineInstanceSpec);
        if (iface && opts.network) await opts.network.announce(vmi, iface.name);
      },
      nodeNetns: opts.network?.netns,
      tlsDir: opts.migrationTlsDir,
      policyCovers: opts.policyCovers,
      vmi: (key) => this.vmis.get(key),
      runDirOf: (vmi) => this.runDirOf(vmi),
      launchIncoming: (vmi, runDir, volumePaths, images) => this.launchIncoming(vmi, runDir, volumePaths, images),
      pools: opts.pools,
      claim: (ns, name) => this.pvcs.get(`${ns}/${name}`),
      stopQemu: (key, runDir) => this.stopQemu(key, runDir),
      releaseSource: (key) => {
        const s = this.sessions.get(key);
        if (s) s.stopping = true;
      },
      record: (vmi, type, reason, message) => this.events.record(vmi, type, reason, message),
      scrub: (message, ns) => this.scrub(message, ns),
      requeue: (key) => this.queue.addAfter(key, 3000),
    });
    // A VMI waiting for its address starts as soon as IPAM has allocated it.
    opts.network?.onAddress((key) => {
      const v = this.vmis.get(key);
      if (v && this.mine(v) && phaseOf(v) !== 'Running' && !FINAL.has(phaseOf(v))) this.queue.add(key);
    });
    // A VMI waiting for its NetworkAttachmentDefinition starts once it appears (or is fixed).
    opts.secondary?.onChange(() => {
      for (const v of this.vmis.list()) if (this.mine(v) && phaseOf(v) !== 'Running' && !FINAL.has(phaseOf(v))) this.queue.add(keyOf(v));
    });
  }

  /** Where the run directories are (`<root>/<namespace>/<uid>`): what a fence or the watchdog kills. */
  get root(): string {
    return vmsRootOf(this.opts.dataDir);
  }

  /** The VMI's run directory: its VM's (by uid), else its own (by uid); see the module comment. */
  runDirOf(vmi: KubeObject): string {
    return this.legacyDirs.get(vmi.metadata.uid ?? '') ?? join(this.root, vmi.metadata.namespace!, runDirKey(vmi));
  }

  /** The run directory of VMI or VM `name` (console, serial log, guest agent); undefined when neither exists. */
  runDirFor(namespace: string, name: string): string | undefined {
    const vmi = this.vmis.get(`${namespace}/${name}`);
    if (vmi) return this.runDirOf(vmi);
    const vm = this.vmList.get(`${namespace}/${name}`);
    return vm?.metadata.uid ? join(this.root, namespace, vm.metadata.uid) : undefined;
  }

  private mine(vmi: KubeObject): boolean {
    return (vmi.status as Obj | undefined)?.nodeName === this.opts.nodeName;
  }

  /** Re-adopts the QEMUs of an earlier run; each is then reconciled like any VMI. */
  protected override async started(): Promise<void> {
    const root = this.root;
    // No vms directory yet is nothing to adopt; one that cannot be read must fail the start, or
    // its QEMUs would be neither adopted nor stopped and their VMIs started a second time.
    for (const ns of await readdir(root).catch(emptyIfMissing)) {
      for (const vm of await listRunDirs(join(root, ns))) {
        const key = `${vm.meta.namespace ?? ns}/${vm.meta.name ?? ''}`;
        const vmi = this.vmis.get(key);
        // A migration relay's sockets left by the agent this one replaces (its relays ended with it).
        await removeRelaySockets(vm.runDir);
        // The launch weight, should the agent before have died during a migration that boosted it.
        if (this.opts.priority) await applyLaunchWeight(vm.pid, this.opts.priority.nice);
        // A VMI that runs on another node: a live migration's target, kept only once the guest has arrived (vms/migration.ts).
        if (vmi && vmi.metadata.uid === vm.meta.uid && !this.mine(vmi) && (await this.migrations.arrived(vmi, vm.runDir))) {
          this.log(`vms: ${key}: the guest has arrived in QEMU pid ${vm.pid} (live migration): waiting for the source to hand it over`);
          continue;
        }
        // A VMI that ended meanwhile (failed over while this node was dead, node-lifecycle.ts) or
        // now runs elsewhere: its leftover QEMU must not run a second copy.
        if (!vmi || vmi.metadata.uid !== vm.meta.uid || !this.mine(vmi) || FINAL.has(phaseOf(vmi))) {
          this.log(`vms: QEMU pid ${vm.pid} in ${vm.runDir} belongs to no current VMI of this node: stopping it`);
          await terminate(vm.runDir, { graceMs: 5000 });
          continue;
        }
        // Started by an agent before run directories were per uid: it stays where it runs.
        if (vm.runDir !== this.runDirOf(vmi) && !UUID.test(vm.runDir.split('/').pop() ?? '')) this.legacyDirs.set(vmi.metadata.uid!, vm.runDir);
        this.log(`vms: re-adopted ${key} (QEMU pid ${vm.pid})`);
        await this.attach(vmi);
      }
    }
    // What a crash left: run directories of VMs and VMIs that no longer exist, and their taps.
    // Only tidying: a failure is logged and the agent starts; the sweep runs again after the
    // next VM or VMI change.
    await this.collectRunDirs().catch((e: unknown) => this.log(`vms: sweeping run directories: ${e instanceof Error ? e.message : e}`));
    // A VM's QEMU here: one it runs, or a live migration's incoming one.
    const here = [...this.sessions.keys(), ...this.migrations.targetKeys()];
    const removed = await this.opts.network?.collect(here).catch((e: unknown) => {
      this.log(`vms: sweeping taps: ${e instanceof Error ? e.message : e}`);
      return 0;
    });
    if (removed) this.log(`vms: removed ${removed} tap${removed === 1 ? '' : 's'} of VMs that no longer run here`);
    const links = await this.opts.secondary?.collect(here).catch((e: unknown) => {
      this.log(`vms: sweeping secondary NICs: ${e instanceof Error ? e.message : e}`);
      return 0;
    });
    if (links) this.log(`vms: removed ${links} secondary-network link${links === 1 ? '' : 's'} of VMs that no longer run here`);
    await this.rebalanceCpus();
  }

  /**
   * Removes run directories no VM or VMI uses any more and in which no QEMU runs, then the
   * namespace directories left empty. Directories are listed before the caches are read, so one
   * made meanwhile for a new VMI is not taken for garbage.
   */
  private async collectRunDirs(): Promise<void> {
    const root = this.root;
    const found: { ns: string; dir: string }[] = [];
    const namespaces = await readdir(root).catch(emptyIfMissing);
    // A namespace directory removed meanwhile is empty; an unreadable one throws (the sweep is retried later).
    for (const ns of namespaces) for (const d of await readdir(join(root, ns)).catch(emptyIfMissing)) found.push({ ns, dir: join(root, ns, d) });
    const wanted = new Set<string>([...this.preparing]);
    for (const vmi of this.vmis.list()) wanted.add(this.runDirOf(vmi));
    for (const vm of this.vmList.list()) if (vm.metadata.uid) wanted.add(join(root, vm.metadata.namespace!, vm.metadata.uid));
    for (const s of this.sessions.values()) wanted.add(s.runDir);
    let removed = 0;
    for (const { dir } of found) {
      if (wanted.has(dir) || (await probe(dir)) !== undefined) continue;
      await rm(dir, { recursive: true, force: true });
      await this.dropCgroup(dir);
      for (const [uid, d] of this.legacyDirs) if (d === dir) this.legacyDirs.delete(uid);
      removed++;
    }
    const inUse = new Set(this.vmis.list().map((v) => v.metadata.namespace));
    // rmdir removes only empty directories: one still holding a run directory stays, as it should.
    for (const ns of namespaces) if (!inUse.has(ns)) await rmdir(join(root, ns)).catch(() => undefined);
    if (removed) this.log(`vms: removed ${removed} run director${removed === 1 ? 'y' : 'ies'} of VMs that no longer exist`);
  }

  protected override async stopped(): Promise<void> {
    // The agent stops; the guests do not. Only the QMP connections close.
    await this.migrations.close();
    for (const s of this.sessions.values()) {
      s.stopping = true;
      await s.qmp.close();
    }
    this.sessions.clear();
  }

  /**
   * Self-fencing (agent/fencing.ts): kills every QEMU of this node at once (incoming migrations
   * too), writing nothing: the node is cut off, and the control plane restarts the VMs elsewhere
   * after this node's fencing deadline. Reconciles wait until unfence().
   */
  async fence(reason: string): Promise<number> {
    this.fencedReason = reason;
    for (const s of this.sessions.values()) s.stopping = true;
    const n = await terminateAll(this.root, { graceMs: 500 });
    for (const s of this.sessions.values()) await s.qmp.close().catch(() => undefined);
    this.sessions.clear();
    return n;
  }

  /** The API server answers again after a fence: reconcile every VMI (those failed over end here). */
  unfence(): void {
    if (this.fencedReason === undefined) return;
    this.fencedReason = undefined;
    for (const v of this.vmis.list()) this.queue.add(keyOf(v));
  }

  protected async reconcile(key: string): Promise<void> {
    if (this.fencedReason !== undefined) return this.queue.addAfter(key, 2000);
    if (key === COLLECT_KEY) return this.collectRunDirs();
    for (let p = this.busy.get(key); p; p = this.busy.get(key)) await p;
    const vmi = this.vmis.get(key);
    const [ns, name] = key.split('/');
    if (!vmi) {
      // Gone without us (finalizer removed by hand): a QEMU left must not run on.
      const gone = this.sessions.get(key);
      if (gone && (await probe(gone.runDir))) await this.stopQemu(key, gone.runDir, gone);
      await this.migrations.forget(key);
      return;
    }
    const runDir = this.runDirOf(vmi);
    // Another node's VMI: this node may be its live migration's target (vms/migration.ts).
    if (!this.mine(vmi)) return this.migrations.reconcileTarget(vmi);
    // Migrated here: the target QEMU becomes this VMI's session below (adopted like after a restart).
    await this.migrations.handOver(key);
    const session = this.sessions.get(key);
    if (session && session.uid !== vmi.metadata.uid) await this.stopQemu(key, session.runDir, session);

    if (vmi.metadata.deletionTimestamp) return this.track(key, () => this.shutdown(vmi, runDir));
    if (FINAL.has(phaseOf(vmi))) {
      if (await probe(runDir)) await this.stopQemu(key, runDir);
      return this.dropFinalizer(vmi);
    }
    if (this.sessions.has(key)) {
      if (phaseOf(vmi) !== 'Running') return;
      // The node lifecycle controller said NodeUnresponsive while this agent was away or slow: it runs.
      if (getCondition(vmi, 'Ready')?.reason === NODE_UNRESPONSIVE) {
        await updateStatus(this.client, VMIS, ns, name, (s, obj) => {
          if (FINAL.has(String(s.phase))) return false;
          this.markRunning(s, obj);
        });
      }
      // Arrived by a migration with dedicated CPUs: this node's CPUs become its own, pinned.
      await this.handOverCpus(vmi).catch((e: unknown) => {
        this.log(`vms: ${key}: dedicated CPUs after the migration: ${e instanceof Error ? e.message : e}`);
        this.queue.addAfter(key, 3000);
      });
      // A live migration whose target is ready: send the guest (vms/migration.ts).
      await this.migrations.reconcileSource(vmi, this.sessions.get(key)!.qmp);
      // Running here: attach / detach its hotplug volumes (vms/hotplug.ts), held against start and stop.
      const { retryMs } = await this.withVm(ns, name, (qmp) => this.hotplug.sync(vmi, qmp));
      if (retryMs) this.queue.addAfter(key, retryMs);
      return;
    }
    const alive = await adopt(runDir);
    if (alive && alive.meta.uid === vmi.metadata.uid) return this.attach(vmi);
    if (!alive) {
      // Its QEMU may run in a run directory by name (an agent before run directories were per uid).
      // A missing legacy directory is not an error (adopt says undefined); failing to clear a
      // stale one must not keep the VM from starting in its own directory, but is logged.
      const legacy = await adopt(join(this.root, ns, name)).catch((e: unknown) => {
        this.log(`vms: ${key}: legacy run directory ${join(ns, name)}: ${e instanceof Error ? e.message : e}`);
        return undefined;
      });
      if (legacy && legacy.meta.uid === vmi.metadata.uid) {
        this.legacyDirs.set(vmi.metadata.uid!, legacy.runDir);
        return this.attach(vmi);
      }
    }
    if (alive) await this.stopQemu(key, runDir);
    if (phaseOf(vmi) === 'Running') {
      // It ran, and its QEMU is gone while we were not watching: a crash or a kill.
      return this.finish(vmi, 'Failed', 'QemuExited', `QEMU exited while the agent was away: ${await lastLogLine(runDir)}`);
    }
    return this.track(key, () => this.startVm(vmi, runDir));
  }

  /**
   * CPUs the dedicated VMIs of this node hold (recorded or being recorded), `exceptUid`'s left
   * out; a VMI migrating here holds its target CPUs from the moment they are assigned.
   */
  private takenCpus(exceptUid?: string): number[] {
    const live = new Set<string>();
    const out: number[] = [];
    for (const v of this.vmis.list()) {
      if (FINAL.has(phaseOf(v)) || v.metadata.uid === exceptUid) continue;
      const ms = migrationStateOfVmi(v);
      if (!this.mine(v) && !(ms?.targetNode === this.opts.nodeName && !ms.failed)) continue;
      live.add(v.metadata.uid ?? '');
      const held = assignmentOn(cpuView(v), this.opts.nodeName);
      if (held) out.push(...assignedCpus(held.a));
    }
    for (const [uid, a] of this.pendingCpus) {
      if (!live.has(uid)) {
        if (uid !== exceptUid) this.pendingCpus.delete(uid);
        continue;
      }
      out.push(...assignedCpus(a));
    }
    return out;
  }

  /**
   * What a VMI with dedicatedCpuPlacement asks of this node's CPU manager (undefined without):
   * `choose` keeps a recorded assignment that still fits (its size, the emulator CPU, free CPUs
   * of the pool), else takes new CPUs.
   */
  private dedicatedCpus(vmi: KubeObject): { uid: string; isolate: boolean; choose: (recorded?: CpuAssignment) => CpuAssignment } | undefined {
    const spec = vmi.spec as V1VirtualMachineInstanceSpec;
    if (spec.domain?.cpu?.dedicatedCpuPlacement !== true) return undefined;
    const cm = this.opts.cpuManager;
    if (!cm)
      throw new CpuManagerError(
        'NoCpuManager',
        `node ${this.opts.nodeName} has no CPU manager for dedicatedCpuPlacement: start its agent with --reserved-cpus`,
      );
    const uid = vmi.metadata.uid ?? '';
    const topo = cpuTopology((spec.domain ?? {}) as unknown as Record<string, unknown>, new Causes());
    const vcpus = topo.sockets * topo.cores * topo.threads;
    const isolate = spec.domain.cpu.isolateEmulatorThread === true;
    const taken = new Set(this.takenCpus(uid));
    const usable = (a: CpuAssignment) =>
      a.vcpus.length === vcpus && (a.emulator !== undefined) === isolate && assignedCpus(a).every((c) => cm.pool.includes(c) && !taken.has(c));
    return { uid, isolate, choose: (recorded) => (recorded && usable(recorded) ? recorded : cm.assign(vcpus, isolate, taken)) };
  }

  /**
   * The dedicated CPUs of a VMI with dedicatedCpuPlacement (undefined without): those its
   * annotations recorded, else new ones from the pool, recorded before QEMU starts. Chosen
   * synchronously, so two starts never take the same CPU.
   */
  private async assignCpus(vmi: KubeObject): Promise<CpuAssignment | undefined> {
    const want = this.dedicatedCpus(vmi);
    if (!want) return undefined;
    const { uid, isolate } = want;
    const recorded = recordedAssignment(vmi.metadata.annotations as Record<string, string> | undefined) ?? this.pendingCpus.get(uid);
    const a = want.choose(recorded);
    this.pendingCpus.set(uid, a);
    if (recorded !== a || !recordedAssignment(vmi.metadata.annotations as Record<string, string> | undefined)) {
      await this.client.patch(VMIS, vmi.metadata.name, { metadata: { annotations: assignmentAnnotations(a) } }, { namespace: vmi.metadata.namespace });
      this.log(`vms: ${keyOf(vmi)}: dedicated CPUs ${a.vcpus.join(',')}${isolate ? `, emulator CPU ${a.emulator}` : ''}`);
    }
    return a;
  }

  /**
   * A migration target's CPUs (docs/pinning.md "Live migration"): assigned from this node's pool
   * before the incoming QEMU starts and recorded in the target annotation (the source's stay in
   * the main ones until the switch). The same ones again when this migration's target is
   * prepared anew. Throws InsufficientDedicatedCpus: the migration fails, the source runs on.
   */
  private async assignIncomingCpus(vmi: KubeObject): Promise<CpuAssignment | undefined> {
    const want = this.dedicatedCpus(vmi);
    if (!want) return undefined;
    const { uid, isolate } = want;
    const migrationUid = migrationStateOfVmi(vmi)?.migrationUid ?? '';
    const recorded = recordedTargetAssignment(vmi.metadata.annotations as Record<string, string> | undefined, migrationUid, this.opts.nodeName);
    const a = want.choose(recorded);
    this.pendingCpus.set(uid, a);
    if (recorded !== a) {
      await this.client.patch(
        VMIS,
        vmi.metadata.name,
        { metadata: { annotations: { [TARGET_CPUS_ANNOTATION]: targetAnnotation(migrationUid, this.opts.nodeName, a) } } },
        { namespace: vmi.metadata.namespace },
      );
      this.log(`vms: ${keyOf(vmi)}: migration target: dedicated CPUs ${a.vcpus.join(',')}${isolate ? `, emulator CPU ${a.emulator}` : ''}`);
    }
    return a;
  }

  /**
   * The guest arrived here by a migration and runs: the target CPUs become the VMI's (main
   * annotations) and its threads are pinned to them; the shared pool is applied again. Also
   * done by an agent restarted between the switch and this handover (the annotation says so).
   */
  private async handOverCpus(vmi: KubeObject): Promise<void> {
    const held = assignmentOn(cpuView(vmi), this.opts.nodeName);
    if (!held?.incoming || !migrationStateOfVmi(vmi)?.completed) return;
    const key = keyOf(vmi);
    await this.pin(key, held.a);
    await this.client.patch(VMIS, vmi.metadata.name, { metadata: { annotations: handoverAnnotations(held.a) } }, { namespace: vmi.metadata.namespace });
    this.pendingCpus.set(vmi.metadata.uid ?? '', held.a);
    this.log(`vms: ${key}: arrived by migration: vCPUs pinned to this node's CPUs ${held.a.vcpus.join(',')}`);
    await this.rebalanceCpus();
  }

  /** Pins a dedicated VMI's vCPU threads to their CPUs and its other threads to the isolated CPU or the shared pool. */
  private async pin(key: string, a: CpuAssignment): Promise<void> {
    const s = this.sessions.get(key);
    const pid = s && (await probe(s.runDir));
    if (!s || !pid) return;
    const emulator = a.emulator !== undefined ? [a.emulator] : this.opts.cpuManager!.shared(this.takenCpus());
    await setAffinity(pid, emulator, true);
    const threads = await s.qmp.execute<{ 'cpu-index': number; 'thread-id': number }[]>('query-cpus-fast');
    for (const t of threads) {
      const cpu = a.vcpus[t['cpu-index']];
      if (cpu === undefined) throw new CpuManagerError('PinningFailed', `vCPU ${t['cpu-index']} has no dedicated CPU`);
      await setAffinity(t['thread-id'], [cpu]);
    }
  }

  /**
   * Every QEMU here but the dedicated vCPU threads gets the shared pool (all CPUs no dedicated
   * VMI holds), which changes as dedicated VMIs start and stop. One pass at a time; failures
   * are logged (a QEMU may be going away meanwhile).
   */
  private rebalanceCpus(): Promise<void> {
    const cm = this.opts.cpuManager;
    if (!cm) return Promise.resolve();
    const next = this.affinity.then(async () => {
      const shared = cm.shared(this.takenCpus());
      for (const [key, s] of this.sessions) {
        const vmi = this.vmis.get(key);
        const pid = await probe(s.runDir);
        if (!vmi || !pid) continue;
        const a = assignmentOn(cpuView(vmi), this.opts.nodeName)?.a ?? this.pendingCpus.get(vmi.metadata.uid ?? '');
        try {
          if (!a) await setAffinity(pid, shared, true);
          else if (a.emulator === undefined) {
            const vcpuThreads = new Set((await s.qmp.execute<{ 'thread-id': number }[]>('query-cpus-fast')).map((t) => t['thread-id']));
            for (const tid of await threadsOf(pid)) if (!vcpuThreads.has(tid)) await setAffinity(tid, shared);
          }
        } catch (e) {
          this.log(`vms: ${key}: setting the shared CPU pool ${shared.join(',')}: ${e instanceof Error ? e.message : e}`);
        }
      }
    });
    this.affinity = next.catch(() => undefined);
    return this.affinity;
  }

  /** A hugepages VMI fails at once, saying so, when the node's pool of its page size has too few free pages. */
  private async checkHugepages(vmi: KubeObject): Promise<void> {
    const domain = (vmi.spec as V1VirtualMachineInstanceSpec).domain;
    const ps = domain?.memory?.hugepages?.pageSize;
    const size = HUGEPAGE_SIZES.find((h) => h.resource === `hugepages-${ps}`);
    if (!size) return;
    const mem = domain.memory?.guest ?? domain.resources?.requests?.memory ?? domain.resources?.limits?.memory;
    const need = Math.ceil((tryParseQuantity(mem) ?? 0) / size.bytes);
    const pool = await hugepagePool(size.sysfs);
    if (!pool || pool.free < need)
      throw new CpuManagerError(
        'HugepagesUnavailable',
        `needs ${need} free ${ps} hugepages and node ${this.opts.nodeName} has ${pool ? `${pool.free} free of ${pool.total}` : 'no such hugepage pool'}`,
      );
  }

  /** VMI `name` when it is scheduled to this node. */
  vmiOnNode(namespace: string, name: string): KubeObject | undefined {
    const vmi = this.vmis.get(`${namespace}/${name}`);
    return vmi && this.mine(vmi) ? vmi : undefined;
  }

  /** The QMP connection of the VMI's QEMU when it runs on this node. */
  qmpFor(namespace: string, name: string): QmpClient | undefined {
    return this.sessions.get(`${namespace}/${name}`)?.qmp;
  }

  /**
   * Runs `work` with the VMI held: no start, shutdown or other held work of the same VMI runs
   * meanwhile (snapshots, restores and hotplug must not race a start). `qmp` is its QEMU's
   * connection when it runs here.
   */
  async withVm<T>(namespace: string, name: string, work: (qmp: QmpClient | undefined) => Promise<T>): Promise<T> {
    const key = `${namespace}/${name}`;
    for (let p = this.busy.get(key); p; p = this.busy.get(key)) await p;
    const run = work(this.qmpFor(namespace, name));
    const held: Promise<void> = run
      .then(
        () => undefined,
        () => undefined,
      )
      .finally(() => {
        if (this.busy.get(key) === held) this.busy.delete(key);
      });
    this.busy.set(key, held);
    return run;
  }

  /**
   * Runs a long step outside the worker, one per VMI at a time. If other work took hold of the
   * VMI (withVm) while this reconcile awaited, the step waits for its turn. A step that fails
   * is retried with the queue's backoff, as a failed reconcile is (say, a finalizer that could
   * not be dropped because the server did not answer).
   */
  private track(key: string, work: () => Promise<void>): void {
    if (this.busy.has(key)) {
      this.queue.addAfter(key, 250);
      return;
    }
    const p = work()
      .catch((e: unknown) => {
        this.log(`vms: ${key}: ${e instanceof Error ? e.message : e}`);
        this.queue.addRateLimited(key);
      })
      .finally(() => {
        if (this.busy.get(key) === p) this.busy.delete(key);
      });
    this.busy.set(key, p);
  }

  private async startVm(vmi: KubeObject, runDir: string): Promise<void> {
    const finalizers = (vmi.metadata.finalizers as string[] | undefined) ?? [];
    if (!finalizers.includes(VMI_FINALIZER)) {
      await this.client.patch(
        VMIS,
        vmi.metadata.name,
        { metadata: { resourceVersion: vmi.metadata.resourceVersion, finalizers: [...finalizers, VMI_FINALIZER] } },
        { namespace: vmi.metadata.namespace },
      );
      return; // the update brings the VMI back
    }
    this.preparing.add(runDir);
    try {
      await this.launchVm(vmi, runDir);
    } finally {
      this.preparing.delete(runDir);
    }
  }

  /** Everything a start needs on disk and on the network (prepare.ts), and QEMU's argv; throws what fails. */
  private async prepareLaunch(
    vmi: KubeObject,
    runDir: string,
    volumePaths?: Record<string, string>,
    hostNuma?: number[],
    containerDiskImages?: Record<string, string>,
  ): Promise<{ typed: TypedVmi; argv: ReturnType<typeof buildQemuArgv>; netns: string | undefined }> {
    const typed = {
      metadata: { name: vmi.metadata.name, namespace: vmi.metadata.namespace!, uid: vmi.metadata.uid },
      spec: vmi.spec as V1VirtualMachineInstanceSpec,
    };
    // The network finds a VM NIC's address by the VMI's owner (its VirtualMachine).
    const owned = { metadata: { ...typed.metadata, ownerReferences: vmi.metadata.ownerReferences } };
    const prepared = await prepareVm({ ...typed, ...owned }, runDir, {
      client: this.client,
      claim: (ns, name) => this.pvcs.get(`${ns}/${name}`),
      locate: (ns, path) => containedPath(this.opts.pools.values(), ns, path, storage.VOLUME_PATH).path,
      egress: this.opts.egress,
      network: this.opts.network,
      secondary: this.opts.secondary,
      volumePaths,
      containerDiskImages,
    });
    return { typed, argv: buildQemuArgv({ vmi: typed, accel: this.opts.accel, ...prepared, hostNumaNodes: hostNuma }), netns: prepared.netns };
  }

  /** Starts QEMU with `argv` in the VMI's run directory (and cgroup) and network namespace `netns`; throws what fails. */
  private async launchQemu(vmi: KubeObject, typed: TypedVmi, runDir: string, argv: ReturnType<typeof buildQemuArgv>, netns: string | undefined): Promise<void> {
    const prio = this.opts.priority;
    // The VM's cgroup (where delegated) is named like its run directory and sized from its resources.
    const domain = typed.spec.domain;
    const cgroupDir = prio?.cgroupParent
      ? await vmCgroup(
          prio.cgroupParent,
          basename(runDir),
          cgroupSettings({ requests: domain?.resources?.requests, limits: domain?.resources?.limits, guestMemory: domain?.memory?.guest }, this.opts.accel),
        )
      : undefined;
    await launch({
      runDir,
      argv: argv.argv,
      chardevs: argv.chardevs,
      env: { ...process.env, ...argv.env },
      vnc: true,
      noShutdown: true,
      vm: { uid: vmi.metadata.uid, namespace: vmi.metadata.namespace, name: vmi.metadata.name },
      priority: prio && { nice: prio.nice, batch: prio.batch, tools: prio.tools, cgroupDir },
      netns, // the VM's pod (masquerade) or the node's namespace
    });
  }

  /** A live migration's target: the VM prepared as for a start, QEMU waiting for the guest (`-incoming defer`). */
  private async launchIncoming(vmi: KubeObject, runDir: string, volumePaths: Record<string, string>, images?: Record<string, string>): Promise<void> {
    this.preparing.add(runDir);
    try {
      const cpus = await this.assignIncomingCpus(vmi);
      const numa = cpus && (await hostNumaNodes());
      const { typed, argv, netns } = await this.prepareLaunch(vmi, runDir, volumePaths, cpus && cpus.vcpus.map((c) => numa?.get(c) ?? 0), images);
      argv.argv.push('-incoming', 'defer');
      await this.launchQemu(vmi, typed, runDir, argv, netns);
    } finally {
      this.preparing.delete(runDir);
    }
  }

  private async launchVm(vmi: KubeObject, runDir: string): Promise<void> {
    const key = keyOf(vmi);
    let typed: TypedVmi;
    let argv: ReturnType<typeof buildQemuArgv>;
    let netns: string | undefined;
    let cpus: CpuAssignment | undefined;
    try {
      await this.checkHugepages(vmi);
      cpus = await this.assignCpus(vmi);
    } catch (e) {
      if (e instanceof CpuManagerError) return this.finish(vmi, 'Failed', e.code, e.message);
      throw e;
    }
    try {
      const numa = cpus && (await hostNumaNodes());
      ({ typed, argv, netns } = await this.prepareLaunch(vmi, runDir, undefined, cpus && cpus.vcpus.map((c) => numa?.get(c) ?? 0)));
    } catch (e) {
      if (e instanceof PrepareError && e.retry) {
        await this.condition(vmi, 'Ready', 'False', e.reason, e.message);
        await this.events.record(vmi, 'Warning', e.reason, this.scrub(e.message, vmi.metadata.namespace));
        this.queue.addAfter(key, 3000);
        return;
      }
      const { reason, message } = startFailure(e);
      return this.finish(vmi, 'Failed', reason, message);
    }
    for (const w of argv.warnings) await this.events.record(vmi, 'Warning', 'SpecWarning', this.scrub(w, vmi.metadata.namespace));
    // A restore with memory: QEMU waits for the saved state instead of booting the guest.
    const recordedResume = (vmi.metadata.annotations as Record<string, string> | undefined)?.[RESUME_MEMORY];
    let resume: string | undefined;
    try {
      // Only a memory state of the VMI's own namespace is loaded.
      resume = recordedResume ? containedPath(this.opts.pools.values(), vmi.metadata.namespace!, recordedResume, RESUME_MEMORY).path : undefined;
    } catch (e) {
      if (e instanceof PathError)
        return this.finish(vmi, 'Failed', e.code, `${e.message}: remove the annotation ${RESUME_MEMORY} from the VirtualMachine and start it again`);
      throw e;
    }
    const resuming =
      !!resume &&
      (await stat(resume).then(
        () => true,
        () => false,
      ));
    if (resume && !resuming)
      await this.events.record(vmi, 'Warning', 'MemoryStateMissing', 'the saved memory state of the snapshot is gone: the guest boots from its disks');
    if (resuming) argv.argv.push('-incoming', 'defer');
    try {
      await this.launchQemu(vmi, typed, runDir, argv, netns);
    } catch (e) {
      const reason = e instanceof QemuProcessError ? e.code : 'LaunchFailed';
      return this.finish(vmi, 'Failed', reason, (e as Error).message);
    }
    await this.recordDigests(vmi, runDir);
    await this.attach(vmi);
    if (cpus) {
      try {
        await this.pin(key, cpus);
      } catch (e) {
        if (!(e instanceof CpuManagerError)) throw e;
        await this.stopQemu(key, runDir);
        return this.finish(vmi, 'Failed', e.code, e.message);
      }
    }
    await this.rebalanceCpus();
    const qmp = this.qmpFor(vmi.metadata.namespace!, vmi.metadata.name);
    if (resuming && qmp && resume) {
      const t0 = Date.now();
      await loadMemory(qmp, resume);
      if ((await qmp.execute<{ status: string }>('query-status')).status === 'paused') await qmp.execute('cont');
      await this.events.record(vmi, 'Normal', 'Resumed', `the guest resumed from its saved memory state in ${Date.now() - t0} ms`);
    }
    await this.events.record(vmi, 'Normal', 'Started', `VirtualMachineInstance started on ${this.opts.nodeName} (${this.opts.accel.toUpperCase()})`);
  }

  /** Follows a running QEMU over QMP and records what it is doing. */
  private async attach(vmi: KubeObject): Promise<void> {
    const key = keyOf(vmi);
    const runDir = this.runDirOf(vmi);
    const qmp = await QmpClient.connect(runDirFiles(runDir).qmp, { timeoutMs: 10_000, waitForSocket: true });
    const session: Session = { uid: vmi.metadata.uid ?? '', runDir, qmp, stopping: false, rebootPending: false };
    this.sessions.set(key, session);
    // AgentConnected while the guest agent answers (qga/watch.ts), watched as long as QMP is.
    const stopAgentWatch = watchAgent(runDirFiles(runDir).qga, (up) =>
      updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s) => !FINAL.has(String(s.phase)) && agentConnected(s, up)),
    );
    qmp.on('close', stopAgentWatch);
    // status.guestOSInfo and the guest's part of status.interfaces, written only when they change.
    const stopGuestPoll = pollGuestStatus(runDirFiles(runDir).qga, async (g) => {
      // The informer's copy first: a guest that reports nothing new costs no request.
      const cached = this.vmis.get(key);
      if (cached && !guestStatus(structuredClone((cached.status ?? {}) as Obj), g)) return;
      await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s) => !FINAL.has(String(s.phase)) && guestStatus(s, g));
    });
    qmp.on('close', stopGuestPoll);
    qmp.on('event', (ev) => {
      void this.onEvent(key, session, ev).catch((e: Error) => this.log(`vms: ${key}: ${ev.event}: ${e.message}`));
    });
    qmp.on('close', () => {
      if (this.sessions.get(key) === session) this.sessions.delete(key);
      if (!session.stopping) void this.onQemuGone(key, session);
    });
    const { status } = await qmp.execute<{ status: string }>('query-status');
    if (status === 'shutdown') return this.guestPoweredOff(key, session);
    // The fresh object: its containerDisk digests (recordDigests) decide LiveMigratable.
    await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s, obj) => {
      if (FINAL.has(String(s.phase))) return false;
      this.markRunning(s, obj);
      setCondition(
        s,
        status === 'paused'
          ? { type: 'Paused', status: 'True', reason: 'PausedByUser', message: 'VMI was paused by user' }
          : { type: 'Paused', status: 'False', reason: '', message: '' },
        false,
      );
    });
  }

  /**
   * Records on the VMI the manifest digests of the containerDisks it was started with
   * (block-migration.ts DIGESTS_ANNOTATION): a live migration's target pulls those, not the tag.
   * One write, before the Running one, and only for VMIs with containerDisks.
   */
  private async recordDigests(vmi: KubeObject, runDir: string): Promise<void> {
    const spec = vmi.spec as V1VirtualMachineInstanceSpec;
    if (!spec.volumes?.some((v) => v.containerDisk)) return;
    const digests = await pulledDigests(spec, runDir);
    const value = JSON.stringify(digests);
    if (vmi.metadata.annotations?.[DIGESTS_ANNOTATION] === value) return;
    await this.client
      .patch(VMIS, vmi.metadata.name, { metadata: { annotations: { [DIGESTS_ANNOTATION]: value } } }, { namespace: vmi.metadata.namespace })
      .catch((e: Error) => this.log(`vms: ${keyOf(vmi)}: recording the containerDisk digests: ${e.message}`));
  }

  private markRunning(s: Obj, vmi: KubeObject): void {
    if (s.phase !== 'Running') {
      s.phase = 'Running';
      const stamps = (s.phaseTransitionTimestamps as Obj[] | undefined) ?? [];
      s.phaseTransitionTimestamps = [...stamps, { phase: 'Running', phaseTransitionTimestamp: new Date().toISOString() }];
    }
    s.nodeName = this.opts.nodeName;
    const spec = (vmi.spec ?? {}) as V1VirtualMachineInstanceSpec;
    const multus = new Map((spec.networks ?? []).filter((n) => n.multus?.networkName).map((n) => [n.name, n.multus!.networkName]));
    s.interfaces = (spec.domain?.devices?.interfaces ?? []).map((i) => {
      // A NIC on a NAD: its MAC (set or derived, as the argv), and the NAD's static address if any.
      const nadName = multus.get(i.name);
      if (this.opts.secondary && nadName !== undefined && bindingOf(i) === 'bridge') {
        const ips = this.opts.secondary.addressesOf(vmi.metadata.namespace!, nadName).map((a) => a.split('/')[0]);
        const mac = i.macAddress?.toLowerCase().replaceAll('-', ':') ?? derivedMac(vmi.metadata.namespace!, vmi.metadata.name, i.name);
        return { name: i.name, mac, ...(ips.length ? { ipAddress: ips[0], ipAddresses: ips } : {}), infoSource: 'domain' };
      }
      // A cluster NIC: the address IPAM gave it, in the same write as Running. podInterfaceName
      // is the node side (the tap, or the pod's veth: KubeVirt reports the pod IP for masquerade); interfaceName is the guest's, which only a guest agent knows.
      const nic = this.opts.network?.nicOf(vmi, i.name);
      if (nic && bindingOf(i))
        return { name: i.name, mac: i.macAddress ?? nic.mac, ipAddress: nic.ip, ipAddresses: [nic.ip], podInterfaceName: nic.tap, infoSource: 'domain' };
      // No node network (user-mode): the MAC the argv gave it, so the guest agent's report can be matched to it.
      const mac = i.macAddress?.toLowerCase().replaceAll('-', ':') ?? derivedMac(vmi.metadata.namespace!, vmi.metadata.name, i.name);
      return { name: i.name, mac, infoSource: 'domain' };
    });
    s.machine = { type: spec.domain?.machine?.type ?? 'q35' };
    s.qosClass = 'Burstable';
    s.guestOSInfo ??= {};
    setCondition(s, { type: 'Ready', status: 'True', reason: '', message: '' }, false);
    setCondition(
      s,
      liveMigratable(
        spec,
        (claim) => claimPool(this.pvcs.get(`${vmi.metadata.namespace}/${claim}`), this.opts.pools),
        recordedDigests(vmi.metadata.annotations),
      ),
      false,
    );
  }

  private async onEvent(key: string, session: Session, ev: QmpEvent): Promise<void> {
    const [ns, name] = key.split('/');
    if (ev.event === 'STOP' || ev.event === 'RESUME') {
      // The switch-over of a live migration stops the source's CPUs: not a pause.
      if (this.migrations.sending(key)) return;
      const { status } = await session.qmp.execute<{ status: string }>('query-status');
      if (status === 'shutdown') return; // SHUTDOWN handles it
      const paused = status !== 'running';
      await updateStatus(this.client, VMIS, ns, name, (s) => {
        if (FINAL.has(String(s.phase))) return false;
        setCondition(
          s,
          paused
            ? {
                type: 'Paused',
                status: 'True',
                reason: status === 'paused' ? 'PausedByUser' : `Paused${status}`,
                message: status === 'paused' ? 'VMI was paused by user' : `QEMU status ${status}`,
              }
            : { type: 'Paused', status: 'False', reason: '', message: '' },
          false,
        );
      });
      const vmi = this.vmis.get(key);
      if (vmi)
        await this.events.record(vmi, 'Normal', paused ? 'Paused' : 'Unpaused', paused ? 'VirtualMachineInstance paused' : 'VirtualMachineInstance unpaused');
    } else if (ev.event === 'SHUTDOWN') {
      if (session.rebootPending) {
        // softreboot without a guest agent: the ACPI power-off we asked for becomes a reset.
        session.rebootPending = false;
        await session.qmp.execute('system_reset');
        await session.qmp.execute('cont');
        const vmi = this.vmis.get(key);
        if (vmi) await this.events.record(vmi, 'Normal', 'SoftRebooted', 'VirtualMachineInstance soft rebooted');
        return;
      }
      if (ev.data.guest === true) await this.guestPoweredOff(key, session);
    } else if (ev.event === 'RESET') {
      const vmi = this.vmis.get(key);
      if (vmi && ev.data.guest === true) await this.events.record(vmi, 'Normal', 'GuestReset', 'the guest rebooted');
    }
  }

  /** The guest powered itself off: QEMU is waiting in 'shutdown'. The VMI has Succeeded. */
  private async guestPoweredOff(key: string, session: Session): Promise<void> {
    const vmi = this.vmis.get(key);
    if (!vmi || vmi.metadata.deletionTimestamp) return; // shutdown() is on it
    await this.stopQemu(key, session.runDir, session);
    await this.finish(vmi, 'Succeeded', 'GuestShutdown', 'the guest powered off');
  }

  private async onQemuGone(key: string, session: Session): Promise<void> {
    // A migration this node was sending writes its outcome first (a post-copy lost with the QEMU).
    await this.migrations.sourceSettled(key, 30_000);
    const vmi = this.vmis.get(key);
    if (!vmi || vmi.metadata.uid !== session.uid || FINAL.has(phaseOf(vmi)) || vmi.metadata.deletionTimestamp) return;
    await this.finish(vmi, 'Failed', 'QemuExited', `QEMU exited unexpectedly: ${await lastLogLine(session.runDir)}`);
  }

  /** Deletion: ACPI power-off, then the kill after the grace period; then the finalizer goes. */
  private async shutdown(vmi: KubeObject, runDir: string): Promise<void> {
    const key = keyOf(vmi);
    const grace = Number((vmi.spec as Obj | undefined)?.terminationGracePeriodSeconds ?? 30);
    const session = this.sessions.get(key);
    if (session && (await probe(runDir))) {
      session.stopping = true;
      await this.events.record(vmi, 'Normal', 'ShuttingDown', `Signaled Graceful Shutdown (grace period ${grace}s)`);
      const off = session.qmp.waitForEvent('SHUTDOWN', { timeoutMs: grace * 1000 }).then(
        () => true,
        () => false,
      );
      // A QEMU that cannot take the request anymore is stopped below when the grace runs out.
      await session.qmp.execute('system_powerdown').catch(() => undefined);
      const graceful = await off;
      await this.stopQemu(key, runDir, session);
      await this.events.record(vmi, 'Normal', 'Deleted', graceful ? 'the guest shut down' : `the guest did not shut down within ${grace}s: stopped`);
    } else if (await probe(runDir)) {
      await this.stopQemu(key, runDir);
    }
    await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s) => {
      if (FINAL.has(String(s.phase))) return false;
      s.phase = 'Succeeded';
      setCondition(s, { type: 'Ready', status: 'False', reason: 'Deleted', message: 'the VMI is being deleted' }, false);
    }).catch((e: unknown) => {
      // The VMI goes with its finalizer anyway: a failed last status write must not keep it, but is worth a line.
      this.log(`vms: ${key}: could not record the shutdown in the status: ${e instanceof Error ? e.message : e}`);
    });
    await this.dropFinalizer(vmi);
  }

  /** Ends a QEMU now (quit over QMP, then signals): callers have already given the guest its grace. */
  private async stopQemu(key: string, runDir: string, session = this.sessions.get(key)): Promise<void> {
    if (session) {
      session.stopping = true;
      this.sessions.delete(key);
      // terminate() below signals a QEMU that did not quit: a failed quit is not a failed stop.
      await session.qmp.execute('quit', undefined, { timeoutMs: 2000 }).catch(() => undefined);
      await session.qmp.close();
    }
    await terminate(runDir, { graceMs: 2000 });
    await this.dropCgroup(runDir);
    await this.releaseNetwork(key);
    await this.rebalanceCpus();
  }

  /** The taps and leases of a VMI whose QEMU is gone. */
  private async releaseNetwork(key: string): Promise<void> {
    const [ns, name] = key.split('/');
    await this.opts.network?.release(ns, name).catch((e: Error) => this.log(`vms: ${key}: releasing its tap: ${e.message}`));
    await this.opts.secondary?.release(ns, name).catch((e: Error) => this.log(`vms: ${key}: releasing its secondary NICs: ${e.message}`));
  }

  /** The VM cgroup of a run directory whose QEMU is gone. */
  private async dropCgroup(runDir: string): Promise<void> {
    if (this.opts.priority?.cgroupParent) await removeVmCgroup(this.opts.priority.cgroupParent, basename(runDir));
  }

  private async finish(vmi: KubeObject, phase: 'Succeeded' | 'Failed', reason: string, raw: string): Promise<void> {
    const message = this.scrub(raw, vmi.metadata.namespace);
    await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s) => {
      if (FINAL.has(String(s.phase))) return false;
      s.phase = phase;
      s.reason = reason;
      const stamps = (s.phaseTransitionTimestamps as Obj[] | undefined) ?? [];
      s.phaseTransitionTimestamps = [...stamps, { phase, phaseTransitionTimestamp: new Date().toISOString() }];
      setCondition(s, { type: 'Ready', status: 'False', reason, message }, false);
    });
    await this.events.record(vmi, phase === 'Failed' ? 'Warning' : 'Normal', phase === 'Failed' ? reason : 'Stopped', message);
    await this.releaseNetwork(keyOf(vmi));
    await this.dropFinalizer(vmi);
    // Its dedicated CPUs (if any) return to the shared pool.
    await this.rebalanceCpus();
  }

  private async condition(vmi: KubeObject, type: string, status: 'True' | 'False', reason: string, message: string): Promise<void> {
    await updateStatus(this.client, VMIS, vmi.metadata.namespace, vmi.metadata.name, (s) => {
      setCondition(s, { type, status, reason, message: this.scrub(message, vmi.metadata.namespace) }, false);
    });
  }

  /** A message for the VMI's status or Events: no pool or run-directory paths (see scrub.ts). */
  private scrub(message: string, namespace: string | undefined): string {
    return scrubPaths(message, { pools: [...this.opts.pools.values()].map((p) => p.dir), other: [this.opts.dataDir] }, namespace);
  }

  private async dropFinalizer(vmi: KubeObject): Promise<void> {
    // Gone is done; any other failure throws, so the reconcile is retried rather than the VMI left stuck.
    const fresh = await this.client.get(VMIS, vmi.metadata.name, { namespace: vmi.metadata.namespace }).catch((e: unknown) => {
      if (isNotFound(e)) return undefined;
      throw e;
    });
    const finalizers = (fresh?.metadata?.finalizers as string[] | undefined) ?? [];
    if (!fresh || !finalizers.includes(VMI_FINALIZER)) return;
    const rest = finalizers.filter((f) => f !== VMI_FINALIZER);
    await this.client.patch(
      VMIS,
      vmi.metadata.name,
      { metadata: { resourceVersion: fresh.metadata?.resourceVersion, finalizers: rest.length ? rest : null } },
      { namespace: vmi.metadata.namespace },
    );
  }

  /** The guestosinfo / userlist / filesystemlist subresources: 409 when the guest agent does not answer, as virt-api. */
  async guestInfo(namespace: string, name: string, kind: GuestInfoKind): Promise<object> {
    const session = this.sessions.get(`${namespace}/${name}`);
    if (!session) throw new VmActionError(409, `VirtualMachineInstance ${namespace}/${name} is not running on node ${this.opts.nodeName}`);
    try {
      return await readGuestInfo(runDirFiles(session.runDir).qga, kind);
    } catch (e) {
      // A command the agent refuses is its answer (500); no answer at all is "not connected".
      if (e instanceof QgaClientError && !(e instanceof QgaError)) throw new VmActionError(409, 'VMI does not have guest agent connected');
      throw e;
    }
  }

  /** The memorydump subresource: QEMU writes the dump into the claim's dump directory (vms/memory-dump.ts). */
  async memoryDump(namespace: string, name: string, claim: string, fileName: string): Promise<void> {
    const session = this.sessions.get(`${namespace}/${name}`);
    if (!session) throw new VmActionError(409, `VirtualMachineInstance ${namespace}/${name} is not running on node ${this.opts.nodeName}`);
    try {
      await startMemoryDump({
        client: this.client,
        qmp: session.qmp,
        pools: this.opts.pools.values(),
        claim: this.pvcs.get(`${namespace}/${claim}`),
        namespace,
        vm: name,
        fileName,
        log: (line) => this.log(`vms: ${line}`),
      });
    } catch (e) {
      if (e instanceof MemoryDumpError) throw new VmActionError(e.code, e.message);
      if (e instanceof PathError) throw new VmActionError(409, e.message);
      throw new VmActionError(500, this.scrub(e instanceof Error ? e.message : String(e), namespace));
    }
  }

  /** pause / unpause / softreboot / reset, as the API server's subresources ask. */
  async act(namespace: string, name: string, action: VmAction): Promise<void> {
    const session = this.sessions.get(`${namespace}/${name}`);
    if (!session) throw new VmActionError(409, `VirtualMachineInstance ${namespace}/${name} is not running on node ${this.opts.nodeName}`);
    const { status } = await session.qmp.execute<{ status: string }>('query-status');
    switch (action) {
      case 'pause':
        if (status === 'paused') throw new VmActionError(409, 'VMI is already paused');
        await session.qmp.execute('stop');
        return;
      case 'unpause':
        if (status !== 'paused') throw new VmActionError(409, 'VMI is not paused');
        await session.qmp.execute('cont');
        return;
      case 'softreboot':
        if (status === 'paused') throw new VmActionError(409, 'VMI is paused: unpause it first');
        session.rebootPending = true;
        await session.qmp.execute('system_powerdown');
        return;
      case 'reset':
        await session.qmp.execute('system_reset');
        if (status === 'paused') await session.qmp.execute('cont');
        return;
    }
  }
}

/** Puts what the guest agent reports into a VMI status; false when nothing changes (no write). */
export function guestStatus(s: Obj, g: GuestStatus): boolean {
  const before = JSON.stringify([s.guestOSInfo, s.interfaces]);
  if (Object.keys(g.guestOSInfo).length) s.guestOSInfo = g.guestOSInfo;
  s.interfaces = mergeInterfaces((s.interfaces as Parameters<typeof mergeInterfaces>[0] | undefined) ?? [], g.interfaces);
  return JSON.stringify([s.guestOSInfo, s.interfaces]) !== before;
}

/** A VM action the VM's state forbids; `code` is the HTTP answer (409). */
export class VmActionError extends HttpError {
  constructor(code: number, message: string) {
    super(code, message);
    this.name = 'VmActionError';
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A VMI's run directory name: its VirtualMachine's uid (kept across the VM's runs), else its own. */
function runDirKey(vmi: KubeObject): string {
  const refs = (vmi.metadata.ownerReferences as { kind?: string; uid?: string }[] | undefined) ?? [];
  const uid = refs.find((r) => r.kind === 'VirtualMachine' && typeof r.uid === 'string' && UUID.test(r.uid))?.uid ?? vmi.metadata.uid ?? '';
  // A uid is what the API server made; anything else (no uid at all) must not make a path of it.
  if (!UUID.test(uid)) throw new Error(`VirtualMachineInstance ${vmi.metadata.namespace}/${vmi.metadata.name} has no valid uid`);
  return uid;
}
