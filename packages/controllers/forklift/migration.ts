/**
 * Running a plan, cold, from an `ova`, `vsphere` or `openshift` provider (docs/forklift.md, "Migration"): for
 * each VM, Forklift's pipeline Initialize → DiskTransfer → VirtualMachineCreation. A disk goes into
 * an upload DataVolume: an OVA's disk is read in place by a node agent that has the package (the
 * DataVolume names it), else its bytes are streamed from the source (an OVA's tar entry range; a
 * vSphere datastore file over HTTPS; an openshift export's raw link; no staging copy) to the upload
 * endpoint (or a DataVolume imports it itself, DiskOpener.dataVolumeSource), where the existing
 * importer checks and converts them with qemu-img. Per-disk progress is in MB, as Forklift's tasks. The steps are idempotent, so a
 * controller restart resumes a migration (a transferred disk is not sent again). At most
 * `maxInFlight` VMs run at once; a VM named in `Migration.spec.cancel` stops where it is (its
 * upload aborted, its DataVolumes deleted) and is Completed with the Canceled condition, as in
 * Forklift; PreHook / PostHook steps run the VM's hooks (./hooks.ts).
 */
import type { IncomingMessage } from 'node:http';
import { Transform, type Readable } from 'node:stream';
import type { Client, Watch } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import { forklift, refs, storage as storageApi, type KubeObject } from '@vessel/api';
import { updateStatus, type Log } from '@vessel/runtime';
import type { PlanVmResult, VmHook } from './validation.ts';
import { convert, STEP as CONVERSION } from './conversion.ts';
import { warmPipeline, WarmRun, type WarmOps } from './warm.ts';

const { DATAVOLUMES, PVCS, VMS, FORKLIFT_MIGRATIONS, FORKLIFT_PLANS } = refs;
const MB = 1_000_000;
/** How often waitDv reads its DataVolume without a watch event (the watch is what wakes it). */
const DV_RECHECK_MS = 1000;
/**
 * VMs of one migration run at once unless the controller manager is told otherwise
 * (`--forklift-max-vm-inflight`, Forklift's controller_max_vm_inflight, whose default is 20;
 * 2 here: a small host's disks and cores, see docs/forklift.md).
 */
export const DEFAULT_MAX_IN_FLIGHT = 2;

type Obj = Record<string, unknown>;
const o = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});

export type Task = forklift.MigrationTask;
export type Step = forklift.MigrationStep;
export type VmStatus = forklift.MigrationVmStatus & { namespace: string };

/** What a run needs from the controller: the plan's validated VMs and where their disks' bytes are. */
export interface RunInput {
  migration: KubeObject;
  plan: KubeObject;
  vms: PlanVmResult[];
  /**
   * The Initialize step of a VM: its source checked again (an OVA package re-read; a vSphere VM
   * powered off), then how to open each disk's bytes (by index) for the transfer.
   */
  initialize: (vm: PlanVmResult) => Promise<DiskOpener>;
  /** StorageClass (and modes) for a package (ova) or datastore id (vsphere), from the StorageMap. */
  storage: (source: string) => { storageClass: string; accessMode?: string; volumeMode?: string } | undefined;
  /** The target network of a source network name, from the NetworkMap. */
  network: (name: string) => { type: string; name?: string; namespace?: string } | undefined;
  /** VMs run at once (default DEFAULT_MAX_IN_FLIGHT). */
  maxInFlight?: number;
  /** Whether the Migration's current `spec.cancel` names the VM. */
  canceled?: (vm: PlanVmResult) => boolean;
  /** Runs one of the VM's hooks; rejects with the reason the step fails. */
  runHook?: (hook: VmHook, vm: PlanVmResult) => Promise<void>;
  /** Whether the VM goes through virt-v2v (the ImageConversion step; ./conversion.ts); none: no VM does. */
  convert?: (vm: PlanVmResult) => boolean;
  /**
   * A warm plan's source operations for a VM (./warm.ts; the `openshift` provider's running VMs);
   * undefined: the VM migrates cold. The Migration's cutover time is read from `cutover` at every move.
   */
  warm?: (vm: PlanVmResult) => WarmOps | undefined;
  cutover?: () => number | undefined;
  precopyIntervalMs?: number;
}

/** A disk's bytes as sent to the upload endpoint. */
export interface DiskBytes {
  size: number;
  stream: Readable;
}

/**
 * Opens disk `i`'s bytes; `close` (when set) ends the source's session after the VM's last disk
 * (or on failure / cancel); `targetVm` (when set) makes the VirtualMachine instead of targetVm()
 * (the openshift provider copies the source VM's spec). `inPlace` (OVA): the package and member a
 * node agent may read the disk from in place (OVA_SOURCE of @vessel/api storage on the
 * DataVolume); the bytes are opened and uploaded only when the agent cannot (it asks for the upload).
 */
export type DiskOpener = ((disk: number) => Promise<DiskBytes>) & {
  close?: () => Promise<void>;
  targetVm?: (vm: PlanVmResult, namespace: string) => Promise<KubeObject>;
  /** When set, disk `i` is a DataVolume importing from this `spec.source` (e.g. `http`) instead of an upload of the opened bytes. */
  dataVolumeSource?: (disk: number) => Promise<Record<string, unknown>>;
  inPlace?: (disk: number) => { package: string; member: string } | undefined;
};

const now = (): string => new Date().toISOString();
/** A DataVolume's name for disk `i` of a VM: `<target>-disk<i>` (Forklift's pvcNameTemplate default differs: generated names). */
export const diskName = (target: string, i: number): string => `${target}-disk${i}`;
/** Disk `i`'s DataVolume: the name the plan's pvcNameTemplate gave, else diskName. */
export const claimName = (vm: PlanVmResult, i: number): string => vm.diskNames?.[i] ?? diskName(vm.targetName, i);

/** Forklift's `Migration.spec.cancel` entry matches a VM by id, or by name when the entry has no id. */
export function cancelNames(cancel: unknown, vm: { id: string; name: string }): boolean {
  return (Array.isArray(cancel) ? cancel : []).some((c) => {
    const r = o(c);
    return typeof r.id === 'string' && r.id ? r.id === vm.id : typeof r.name === 'string' && !!r.name && r.name === vm.name;
  });
}

/** Forklift's end of a migration: Failed when a VM failed, Canceled when every VM was canceled, else Succeeded. */
export function migrationOutcome(vms: readonly Pick<VmStatus, 'phase' | 'conditions'>[]): 'Succeeded' | 'Failed' | 'Canceled' {
  const has = (v: Pick<VmStatus, 'conditions'>, t: string) => (v.conditions ?? []).some((c) => c.type === t && c.status === 'True');
  if (vms.some((v) => v.phase === 'Failed' || has(v, 'Failed'))) return 'Failed';
  if (vms.length && vms.every((v) => has(v, 'Canceled'))) return 'Canceled';
  return 'Succeeded';
}

/** Runs `fn` over `items`, at most `limit` at once, in order. */
export async function runLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(
    Array.from({ length: Math.min(Math.max(1, limit), queue.length) }, async () => {
      for (let next = queue.shift(); next !== undefined; next = queue.shift()) await fn(next);
    }),
  );
}

/** Test knob (VESSEL_TEST_FORKLIFT_BYTES_PER_SEC): a transfer paced to that rate, so a test can cancel it mid-way. */
function paced(stream: Readable, bytesPerSec: number): Readable {
  const t0 = Date.now();
  let sent = 0;
  const pacer = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      sent += chunk.length;
      setTimeout(() => cb(null, chunk), Math.max(0, (sent / bytesPerSec) * 1000 - (Date.now() - t0)));
    },
  });
  stream.on('error', (e) => pacer.destroy(e));
  pacer.on('close', () => stream.destroy());
  return stream.pipe(pacer);
}

export function initialStatus(vm: PlanVmResult, namespace: string, convert = false): VmStatus {
  const mbOf = (b: number) => Math.ceil(b / MB);
  const hook = (step: 'PreHook' | 'PostHook'): Step[] =>
    vm.hooks?.some((h) => h.step === step) ? [{ name: step, phase: 'Pending', progress: { total: 1, completed: 0 } }] : [];
  return {
    id: vm.vm.id,
    name: vm.vm.name,
    namespace,
    ...(vm.newName ? { newName: vm.newName } : {}),
    phase: 'Pending',
    pipeline: [
      { name: 'Initialize', phase: 'Pending', progress: { total: 1, completed: 0 } },
      ...hook('PreHook'),
      {
        name: 'DiskTransfer',

        phase: 'Pending',
        progress: { total: vm.vm.disks.reduce((a, d) => a + mbOf(d.capacity), 0), completed: 0 },
        annotations: { unit: 'MB' },
        tasks: vm.vm.disks.map((d, i) => ({
          name: claimName(vm, i),
          phase: 'Pending',
          progress: { total: mbOf(d.capacity), completed: 0 },
          annotations: { unit: 'MB', file: d.file },
        })),
      },
      ...(convert ? [{ name: CONVERSION, phase: 'Pending', progress: { total: 1, completed: 0 } }] : []),
      { name: 'VirtualMachineCreation', phase: 'Pending', progress: { total: 1, completed: 0 } },
      ...hook('PostHook'),
    ],
  };
}

/** The VirtualMachine made for a migrated VM: CPUs, memory, firmware, NICs on the mapped networks with their MACs, the transferred disks. */
export function targetVm(vm: PlanVmResult, namespace: string, plan: KubeObject, input: Pick<RunInput, 'network'>): KubeObject {
  const v = vm.vm;
  const networks: Obj[] = [];
  const interfaces: Obj[] = [];
  v.nics.forEach((n, i) => {
    const dst = input.network(n.network);
    if (!dst || dst.type === 'ignored') return;
    const name = `net${i}`;
    const mac = n.mac ? { macAddress: n.mac } : {};
    if (dst.type === 'pod') {
      networks.push({ name, pod: {} });
      interfaces.push({ name, masquerade: {}, ...mac });
    } else {
      networks.push({ name, multus: { networkName: dst.namespace ? `${dst.namespace}/${dst.name}` : dst.name } });
      interfaces.push({ name, bridge: {}, ...mac });
    }
  });
  const power = o(plan.spec).targetPowerState;
  // `auto` (and unset): the source's power state before the migration (vSphere; an OVA's is off).
  const on = power === 'on' || ((power === undefined || power === 'auto') && (v as { powerState?: string }).powerState === 'poweredOn');
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: {
      name: vm.targetName,
      namespace,
      labels: { 'forklift.konveyor.io/plan': plan.metadata?.name ?? '', 'forklift.konveyor.io/vm-id': v.id },
      annotations: { 'forklift.konveyor.io/source-vm-name': v.name },
    },
    spec: {
      runStrategy: on ? 'Always' : 'Halted',
      template: {
        spec: {
          domain: {
            cpu: { cores: Math.max(1, v.cpus) },
            resources: { requests: { memory: `${Math.max(1, Math.round(v.memoryMB))}Mi` } },
            ...(v.firmware === 'efi' ? { firmware: { bootloader: { efi: { secureBoot: false } } } } : {}),
            devices: { disks: v.disks.map((_, i) => ({ name: `disk${i}`, disk: { bus: 'virtio' } })), interfaces },
          },
          networks,
          volumes: v.disks.map((_, i) => ({ name: `disk${i}`, dataVolume: { name: claimName(vm, i) } })),
        },
      },
    },
  };
}

async function body(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Thrown inside a run when its controller stops (lost the lease): nothing more is written, the next leader resumes. */
class Stopped extends Error {}
/** Thrown inside a VM's run when the Migration's `spec.cancel` names it. */
class Canceled extends Error {}

/** Runs one Migration to its end; status written to the Migration and the Plan's `status.migration`. */
export class MigrationRun {
  private readonly vms: VmStatus[];
  private stopped = false;
  /** The VMs running now, by id: aborting one's controller stops its transfer (cancel). */
  private readonly active = new Map<string, { vm: PlanVmResult; abort: AbortController }>();
  private writing = Promise.resolve();
  private lastWrite = 0;

  constructor(
    private readonly client: Client,
    private readonly input: RunInput,
    private readonly log: Log,
  ) {
    const ns = o(input.plan.spec).targetNamespace as string;
    const prev = (o(input.migration.status).vms as VmStatus[] | undefined) ?? [];
    this.vms = input.vms.map((v) => prev.find((p) => p.id === v.vm.id && p.phase === 'Completed') ?? initialStatus(v, ns, input.convert?.(v) ?? false));
  }

  /** The Migration changed: VMs its `spec.cancel` now names stop where they are. */
  checkCancel(): void {
    for (const { vm, abort } of this.active.values()) if (this.input.canceled?.(vm)) abort.abort(new Canceled('canceled'));
  }

  /** Stops at the next step or poll; the run's promise then settles without marking anything failed. */
  stop(): void {
    this.stopped = true;
  }

  async run(): Promise<void> {
    try {
      await this.runAll();
    } catch (e) {
      if (!(e instanceof Stopped)) throw e;
    }
  }

  private async runAll(): Promise<void> {
    const started = (o(this.input.migration.status).started as string | undefined) ?? now();
    await this.write({ started, running: true });
    const queue = this.input.vms.map((v, i) => ({ v, s: this.vms[i] })).filter((x) => x.s.phase !== 'Completed');
    await runLimited(queue, this.input.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT, (x) => this.runVm(x.v, x.s));
    if (this.stopped) throw new Stopped('stopped');
    await this.write({ started, running: false, completed: now() }, true);
  }

  private step(s: VmStatus, name: string): Step {
    return s.pipeline.find((p) => p.name === name)!;
  }

  private begin(st: Step): void {
    st.phase = 'Running';
    st.started ??= now();
  }
  private finish(st: Step): void {
    st.phase = 'Completed';
    st.completed = now();
    st.progress.completed = st.progress.total;
  }

  private async runVm(v: PlanVmResult, s: VmStatus): Promise<void> {
    const ns = s.namespace;
    const abort = new AbortController();
    const signal = abort.signal;
    this.active.set(v.vm.id, { vm: v, abort });
    let current = 'Initialize';
    let cleanup: (() => Promise<void>) | undefined;
    let makeVm: DiskOpener['targetVm'];
    let warm: WarmOps | undefined;
    // Step boundaries check the cancel list too: a cancel written before the VM started, or between watch events.
    const checkpoint = () => {
      if (this.stopped) throw new Stopped('stopped');
      if (this.input.canceled?.(v)) abort.abort(new Canceled('canceled'));
      if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new Canceled('canceled');
    };
    try {
      checkpoint();
      s.started ??= now();
      const spec = o(this.input.plan.spec);
      warm = spec.warm === true || spec.type === 'warm' ? this.input.warm?.(v) : undefined;
      if (warm) {
        await this.runWarm(s, warm, checkpoint, (c) => (current = c));
        this.active.delete(v.vm.id);
        s.phase = 'Completed';
        s.completed = now();
        s.conditions = [{ type: 'Succeeded', status: 'True', category: 'Advisory', message: 'The VM migration has SUCCEEDED.', lastTransitionTime: now() }];
        await this.write(undefined, true);
        return;
      }
      s.phase = 'Initialize';
      const init = this.step(s, 'Initialize');
      this.begin(init);
      const open = await this.input.initialize(v);
      cleanup = open.close;
      makeVm = open.targetVm;
      this.finish(init);
      await this.hook(v, s, 'PreHook', checkpoint, (c) => (current = c));
      checkpoint();
      current = 'DiskTransfer';
      s.phase = 'DiskTransfer';
      const transfer = this.step(s, 'DiskTransfer');
      this.begin(transfer);
      await this.write();
      for (const [i, d] of v.vm.disks.entries()) {
        checkpoint();
        await this.transferDisk(v, i, d.datastore ?? v.vm.source, open, transfer.tasks![i], transfer, ns, signal);
      }
      this.finish(transfer);
      checkpoint();
      if (s.pipeline.some((p) => p.name === CONVERSION)) {
        current = CONVERSION;
        s.phase = CONVERSION;
        await this.convertVm(v, s, this.step(s, CONVERSION));
        checkpoint();
      }
      current = 'VirtualMachineCreation';
      s.phase = 'VirtualMachineCreation';
      const create = this.step(s, 'VirtualMachineCreation');
      this.begin(create);
      await this.write();
      try {
        await this.client.create(VMS, makeVm ? await makeVm(v, ns) : targetVm(v, ns, this.input.plan, this.input), { namespace: ns });
      } catch (e) {
        if (!isStatusError(e, 'AlreadyExists')) throw e;
      }
      this.finish(create);
      // The VM exists: from here a cancel no longer undoes it (Forklift's canceled VMs are the unfinished ones).
      this.active.delete(v.vm.id);
      await this.hook(
        v,
        s,
        'PostHook',
        () => undefined,
        (c) => (current = c),
      );
      s.phase = 'Completed';
      s.completed = now();
      s.conditions = [{ type: 'Succeeded', status: 'True', category: 'Advisory', message: 'The VM migration has SUCCEEDED.', lastTransitionTime: now() }];
    } catch (e) {
      if (this.stopped) throw new Stopped('stopped');
      if (e instanceof Canceled || (signal.aborted && signal.reason instanceof Canceled)) await this.canceled(v, s, current, warm);
      else {
        const reason = e instanceof Error ? e.message : String(e);
        this.log(`forklift: migration ${this.input.migration.metadata?.name}: VM ${v.vm.name}: ${current}: ${reason}`);
        const st = this.step(s, current);
        st.phase = 'Failed';
        st.error = { phase: current, reasons: [reason] };
        s.error = { phase: current, reasons: [reason] };
        s.phase = 'Failed';
        s.completed = now();
        s.conditions = [{ type: 'Failed', status: 'True', category: 'Advisory', message: 'The VM migration has FAILED.', lastTransitionTime: now() }];
      }
    } finally {
      this.active.delete(v.vm.id);
      await cleanup?.().catch(() => undefined);
    }
    await this.write(undefined, true);
  }

  /** A warm VM (./warm.ts): its own pipeline; on a failure or cancel its tracking and exports go. */
  private async runWarm(s: VmStatus, ops: WarmOps, checkpoint: () => void, at: (step: string) => void): Promise<void> {
    if (!s.pipeline.some((p) => p.name === 'Cutover')) s.pipeline = warmPipeline([]);
    const run = new WarmRun(s, ops, {
      precopyIntervalMs: this.input.precopyIntervalMs,
      cutover: () => this.input.cutover?.(),
      write: (force) => this.write(undefined, force),
      checkpoint,
      log: this.log,
    });
    try {
      await run.run();
    } catch (e) {
      at(run.current());
      if (!this.stopped) await ops.release().catch(() => undefined);
      throw e;
    }
  }

  /** Runs the VM's hook for `step` when it has one: the step Running, then Completed, or the hook's reason thrown. */
  private async hook(v: PlanVmResult, s: VmStatus, step: 'PreHook' | 'PostHook', checkpoint: () => void, at: (step: string) => void): Promise<void> {
    const h = v.hooks?.find((x) => x.step === step);
    if (!h) return;
    checkpoint();
    at(step);
    s.phase = step;
    const st = this.step(s, step);
    this.begin(st);
    await this.write();
    if (!this.input.runHook) throw new Error(`hooks cannot run here`);
    await this.input.runHook(h, v);
    this.finish(st);
  }

  /**
   * A canceled VM, as Forklift leaves it: phase Completed with the Canceled condition; the step it
   * was in (and its running disk tasks) Canceled; its DataVolumes and claims deleted (a warm VM's
   * by its ops: they have their own names).
   */
  private async canceled(v: PlanVmResult, s: VmStatus, current: string, warm?: WarmOps): Promise<void> {
    this.log(`forklift: migration ${this.input.migration.metadata?.name}: VM ${v.vm.name}: canceled at ${current}`);
    const t = now();
    for (const st of s.pipeline) {
      if (st.phase === 'Running') {
        st.phase = 'Canceled';
        st.completed = t;
      }
      for (const task of st.tasks ?? [])
        if (task.phase === 'Running') {
          task.phase = 'Canceled';
          task.completed = t;
        }
    }
    const ns = s.namespace;
    if (warm) await warm.discard();
    else
      for (const i of v.vm.disks.keys()) {
        for (const ref of [DATAVOLUMES, PVCS])
          await this.client.delete(ref, claimName(v, i), { namespace: ns }).catch((e: unknown) => {
            if (!isStatusError(e, 'NotFound')) throw e;
          });
      }
    s.phase = 'Completed';
    s.completed = t;
    s.conditions = [
      { type: 'Canceled', status: 'True', category: 'Advisory', reason: 'UserRequested', message: 'The migration has been canceled.', lastTransitionTime: t },
    ];
  }

  /** The ImageConversion step: the agent holding the volumes runs virt-v2v on them in place; its stage is the step's `reason`. */
  private async convertVm(v: PlanVmResult, s: VmStatus, st: Step): Promise<void> {
    this.begin(st);
    await this.write();
    const done = await convert(
      this.client,
      s.namespace,
      v.vm.disks.map((_, i) => claimName(v, i)),
      {
        id: `${this.input.migration.metadata?.uid ?? ''}/${v.vm.id}`,
        claims: v.vm.disks.map((_, i) => claimName(v, i)),
        firmware: v.vm.firmware === 'efi' ? 'efi' : 'bios',
        name: v.targetName,
        memoryMB: v.vm.memoryMB,
        cpus: v.vm.cpus,
      },
      (c) => {
        if (c.stages) st.progress = { total: c.stages.total, completed: Math.min(c.stages.completed, c.stages.total) };
        if (c.stage) st.reason = c.stage;
        void this.write();
      },
      () => this.stopped,
    );
    this.finish(st);
    if (done.warnings?.length) st.warning = { phase: CONVERSION, reasons: done.warnings };
    if (done.seconds !== undefined) st.annotations = { ...st.annotations, seconds: String(done.seconds) };
  }

  /** One disk: an upload DataVolume of its capacity, then the source's bytes (OVA member, datastore file) streamed to it. */
  private async transferDisk(
    v: PlanVmResult,
    i: number,
    storage: string,
    open: DiskOpener,
    task: Task,
    transfer: Step,
    ns: string,
    signal: AbortSignal,
  ): Promise<void> {
    const name = claimName(v, i);
    const sc = this.input.storage(storage);
    task.phase = 'Running';
    task.started ??= now();
    const imported = open.dataVolumeSource ? await open.dataVolumeSource(i) : undefined;
    // The test knob paces uploads, so a paced run keeps to them.
    const inPlace = imported || Number(process.env.VESSEL_TEST_FORKLIFT_BYTES_PER_SEC ?? 0) > 0 ? undefined : open.inPlace?.(i);
    const dv = {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: {
        name,
        namespace: ns,
        labels: { 'forklift.konveyor.io/plan': this.input.plan.metadata?.name ?? '', 'forklift.konveyor.io/vm-id': v.vm.id },
        ...(inPlace ? { annotations: { [storageApi.OVA_SOURCE]: JSON.stringify(inPlace) } } : {}),
      },
      spec: {
        source: imported ?? { upload: {} },
        storage: {
          resources: { requests: { storage: String(v.vm.disks[i].capacity) } },
          ...(sc?.storageClass ? { storageClassName: sc.storageClass } : {}),
          ...(sc?.accessMode ? { accessModes: [sc.accessMode] } : {}),
          ...(sc?.volumeMode ? { volumeMode: sc.volumeMode } : {}),
        },
      },
    };
    try {
      await this.client.create(DATAVOLUMES, dv, { namespace: ns });
    } catch (e) {
      if (!isStatusError(e, 'AlreadyExists')) throw e;
    }
    // Imported or read in place by an agent, the disk's progress is the DataVolume's (status.progress).
    const fromDv = (percent: number) => {
      task.progress.completed = Math.min(task.progress.total, Math.floor((percent / 100) * task.progress.total));
      transfer.progress.completed = (transfer.tasks ?? []).reduce((a, t) => a + t.progress.completed, 0);
      void this.write();
    };
    const phase = await this.waitDv(name, ns, imported ? ['Succeeded'] : ['UploadReady', 'Succeeded'], signal, fromDv);
    if (phase !== 'Succeeded') {
      const token = (
        await this.client.request<{ status: { token: string } }>(
          'POST',
          `/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/${encodeURIComponent(ns)}/uploadtokenrequests`,
          {
            body: { apiVersion: 'upload.cdi.kubevirt.io/v1beta1', kind: 'UploadTokenRequest', metadata: { name, namespace: ns }, spec: { pvcName: name } },
          },
        )
      ).status.token;
      const { stream: source, size } = await open(i);
      const pace = Number(process.env.VESSEL_TEST_FORKLIFT_BYTES_PER_SEC ?? 0);
      const stream = pace > 0 ? paced(source, pace) : source;
      const stop = () => {
        stream.destroy();
        source.destroy();
      };
      signal.addEventListener('abort', stop, { once: true });
      let sent = 0;
      const base = transfer.progress.completed;
      stream.on('data', (c) => {
        sent += c.length;
        // Progress in MB of the disk's capacity, as the bytes of the (compressed) VMDK arrive.
        task.progress.completed = Math.min(task.progress.total, Math.floor((sent / Math.max(1, size)) * task.progress.total));
        transfer.progress.completed = base + task.progress.completed;
        void this.write();
      });
      const res = await this.client.stream('POST', '/v1beta1/upload', {
        bearer: token,
        body: stream,
        headers: { 'Upload-Offset': '0', 'Upload-Length': String(size), 'Content-Length': String(size) },
        signal,
      });
      const text = await body(res).finally(() => signal.removeEventListener('abort', stop));
      if (res.statusCode !== 200) throw new Error(`upload of ${name} refused (${res.statusCode}): ${text.slice(0, 300)}`);
      await this.waitDv(name, ns, ['Succeeded'], signal);
    }
    task.phase = 'Completed';
    task.completed = now();
    task.progress.completed = task.progress.total;
    transfer.progress.completed = (transfer.tasks ?? []).reduce((a, t) => a + t.progress.completed, 0);
  }

  /**
   * Waits for the DataVolume to reach one of `phases` (Failed throws). Woken by a watch on it, so
   * its end is seen within milliseconds (this wait is the plan's tail, issue 14); every
   * DV_RECHECK_MS it reads the object anyway, should the watch have ended or a stop or cancel
   * come, which the loop also checks.
   */
  private async waitDv(name: string, ns: string, phases: string[], signal: AbortSignal, onProgress?: (percent: number) => void): Promise<string> {
    let wake: (() => void) | undefined;
    const poke = () => wake?.();
    let watch: Watch | undefined;
    signal.addEventListener('abort', poke);
    try {
      for (;;) {
        if (this.stopped) throw new Stopped('stopped');
        if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new Canceled('canceled');
        const dv = await this.client.get(DATAVOLUMES, name, { namespace: ns });
        const phase = String(o(dv.status).phase ?? '');
        if (phases.includes(phase)) return phase;
        if (phase === 'Failed') throw new Error(`DataVolume ${ns}/${name} failed: ${JSON.stringify(o(dv.status).conditions ?? []).slice(0, 300)}`);
        const percent = parseFloat(String(o(dv.status).progress ?? ''));
        if (onProgress && phase === 'ImportInProgress' && Number.isFinite(percent)) onProgress(percent);
        if (!watch) {
          // From the version just read: no change between that read and the watch is missed.
          watch = this.client.watchResource(
            DATAVOLUMES,
            { namespace: ns, fieldSelector: `metadata.name=${name}`, resourceVersion: dv.metadata?.resourceVersion },
            poke,
          );
          watch.done.then(poke, poke); // an ended watch leaves the timer
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, DV_RECHECK_MS);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    } finally {
      signal.removeEventListener('abort', poke);
      watch?.close();
    }
  }

  /** Writes the VMs' status to the Migration and the Plan; progress writes at most every second. */
  private write(run?: { started: string; running: boolean; completed?: string }, force = false): Promise<void> {
    if (this.stopped) return this.writing;
    if (!force && !run && Date.now() - this.lastWrite < 1000) return this.writing;
    this.lastWrite = Date.now();
    const vms = structuredClone(this.vms);
    const m = this.input.migration;
    const p = this.input.plan;
    this.writing = this.writing.then(async () => {
      const end = migrationOutcome(vms);
      await updateStatus(this.client, FORKLIFT_MIGRATIONS, m.metadata?.namespace, m.metadata?.name ?? '', (s) => {
        if (run) {
          s.started = run.started;
          if (run.completed) s.completed = run.completed;
          const t = now();
          s.conditions = run.running
            ? [{ type: 'Running', status: 'True', category: 'Advisory', reason: 'Started', message: 'The migration is RUNNING.', lastTransitionTime: t }]
            : [{ type: end, status: 'True', category: 'Advisory', message: `The migration has ${end.toUpperCase()}.`, lastTransitionTime: t }];
        }
        s.vms = vms;
      });
      await updateStatus(this.client, FORKLIFT_PLANS, p.metadata?.namespace, p.metadata?.name ?? '', (s) => {
        const mig = o(s.migration);
        s.migration = { ...mig, ...(run ? { started: run.started, ...(run.completed ? { completed: run.completed } : {}) } : {}), vms };
      });
    });
    this.writing = this.writing.catch((e: unknown) => this.log(`forklift: status of migration ${m.metadata?.name}: ${e instanceof Error ? e.message : e}`));
    return this.writing;
  }
}
