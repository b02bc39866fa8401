/**
 * Day-two operations benchmark (issue 5): snapshots, restores and clones of VMs, and snapshots
 * with guest memory. The API server, controllers and node agent run in this process
 * (e2e/harness.ts, node `node-a`); VMs boot the `tiny` golden guest (ensureTinyImage) with real
 * QEMU (TCG here). Every figure is a ratio against a baseline done by hand in the same run.
 *
 * linked: two stopped VMs whose root disk is a linked clone of `tiny` (the same data), with a
 *   1 GiB and a 20 GiB claim (dataVolumeTemplates storage 1Gi / 20Gi). N rounds
 *   (BENCH_SNAPSHOT_N, 5), sizes alternating, each timing through the API, from the POST to
 *   the watch event that shows it done:
 *     offline snapshot (VirtualMachineSnapshot → Succeeded), restore into the same stopped VM
 *     (VirtualMachineRestore → complete), restore into a new VM and linked clone from the
 *     snapshot (VirtualMachineClone → Succeeded, both also until the new claim is Bound, which
 *     since the restore waits for its claims should come first);
 *   then with both VMs running: online snapshot, and a linked clone of the running VM (which
 *   takes its own online snapshot; until the new claim is Bound, and a PROBLEM if it is not
 *   within 30 s, as before commit 8c3c616 while the source VM ran, and for a second clone of a
 *   running VM until its overlay's file node was added on its own). Baseline: `qemu-img
 *   create -f qcow2 -b <file> -F qcow2 <dest>` by hand on the VM's disk (offline) or on the
 *   snapshot file just taken (online). Claim: the times do not grow with the disk size (20 GiB / 1 GiB ~ 1).
 *
 * full: two more stopped VMs (4 GiB and 20 GiB claims) with BENCH_SNAPSHOT_DATA_MIB (2048) MiB
 *   of data written into the disk with qemu-io, an offline snapshot of each, then N rounds of a
 *   full clone from the snapshot (annotation clone.vessel.io/type: full; POST → clone
 *   Succeeded and the new claim Bound) against `qemu-img convert -f qcow2 -O qcow2 <snapshot
 *   file> <dest>` by hand (page cache, no fsync), and against the same with the agent's flags
 *   (`-t none`, then fsync). `sync` runs between runs (untimed). Goal: at most 1.1.
 *
 * memory: a 256 MiB and a 1 GiB guest (memory requests 256Mi / 1Gi). After each cold boot,
 *   BENCH_SNAPSHOT_MEM_FILL_PCT (25) % of the guest's memory is filled with non-zero data in
 *   its /run tmpfs through the serial console, so the guest has memory worth saving. Per round:
 *   cold boot (start → first `VESSEL-COUNTER` line), snapshot with memory (annotation
 *   snapshot.vessel.io/with-memory; POST → Succeeded), stop, restore in place, start → the
 *   guest's next counter line (resumed, checked: no kernel boot; the guest is stopped with an
 *   ACPI power-off, the restore's target must be stopped). Baseline: the cold boot of
 *   the same VM, and raw QEMU by hand with the agent's argv: `stop` + `migrate exec:cat >
 *   file` over QMP, and a QEMU with `-incoming defer` + `migrate-incoming` + `cont` → next
 *   counter line (and the same with max-bandwidth lifted). BENCH_SNAPSHOT_MEM_N (3) rounds per
 *   size. Resumes are also timed to the guest's first echo of a key typed on its console
 *   (sharper than the counter, which ticks once a second).
 *
 *   node --import tsx bench/snapshot.bench.ts
 *   env: BENCH_SNAPSHOT_ONLY=linked|full|memory (comma-separated), BENCH_SNAPSHOT_N (5),
 *        BENCH_SNAPSHOT_MEM_N (3), BENCH_SNAPSHOT_DATA_MIB (2048),
 *        BENCH_SNAPSHOT_MEM_FILL_PCT (25; 0 = no fill), BENCH_SNAPSHOT_DIR (os.tmpdir())
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { backingFile, qemuImg } from '@vessel/agent';
import { CLONE_DISK_TYPE, snapshots } from '@vessel/api';
import { isNotFound, type KubeObject, type ResourceRef, type Watch } from '@vessel/client';
import { startVessel, type Vessel } from '../e2e/harness.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { attachSerial, launch, listRunDirs, runDirFiles, terminate } from '../packages/agent/qemu/process.ts';
import { QmpClient } from '../packages/agent/qmp/client.ts';
import { cloneVolume } from '../packages/agent/storage/clone.ts';
import {
  chardevsOf,
  errText,
  fmtRatio,
  isMain,
  loadLine,
  ms,
  now,
  percentile,
  printResult,
  PVCS,
  ratio,
  sleep,
  volumePath,
  type BenchResult,
  type Figure,
} from './lib.ts';

const VMS: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMIS: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const SNAPSHOTS: ResourceRef = { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinesnapshots', namespaced: true };
const CONTENTS: ResourceRef = { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinesnapshotcontents', namespaced: true };
const RESTORES: ResourceRef = { group: 'snapshot.kubevirt.io', version: 'v1beta1', plural: 'virtualmachinerestores', namespaced: true };
const CLONES: ResourceRef = { group: 'clone.kubevirt.io', version: 'v1beta1', plural: 'virtualmachineclones', namespaced: true };
const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };

const NS = 'default';
const IMAGES = 'vessel-images';
const MiB = 1 << 20;
const GiB = 1 << 30;
/** Annotations of the product. */
const { WITH_MEMORY, SNAPSHOT_FILES, MEMORY_FILE } = snapshots;

const OP_TIMEOUT_MS = 180_000;
const BOOT_TIMEOUT_MS = 240_000;
const STOP_TIMEOUT_MS = 120_000;
/** Quiet time before each timed operation, so the previous one's background work (events, GC) settles. */
const GAP_MS = 300;
const GRACE_S = 15;

type Obj = Record<string, unknown>;
const statusOf = (o: KubeObject | undefined): Obj => (o?.status ?? {}) as Obj;
const phaseOf = (o: KubeObject | undefined) => String(statusOf(o).phase ?? '');
const annotationsOf = (o: KubeObject | undefined) => (o?.metadata?.annotations ?? {}) as Record<string, string>;
const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
const p = (xs: number[], q: number) => percentile(sorted(xs), q);
const p50 = (xs: number[]) => p(xs, 50);
const p50p95 = (xs: number[]) => `p50 ${ms(p(xs, 50))}, p95 ${ms(p(xs, 95))}`;
const signedMs = (v: number) => (v >= 0 ? '+' : '−') + ms(Math.abs(v));
const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;

function envInt0(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a whole number >= 0, not "${raw}"`);
  return n;
}
const envPos = (name: string, fallback: number) => {
  const n = envInt0(name, fallback);
  if (n === 0) throw new Error(`${name} must be positive`);
  return n;
};

function sh(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '',
      err = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim()}`))));
  });
}

async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t0 = now();
  await f();
  return now() - t0;
}

// ---------------------------------------------------------------- the namespace, followed over watches

type Kind = 'vm' | 'vmi' | 'pvc' | 'snap' | 'content' | 'restore' | 'clone';
const FOLLOWED: Record<Kind, ResourceRef> = { vm: VMS, vmi: VMIS, pvc: PVCS, snap: SNAPSHOTS, content: CONTENTS, restore: RESTORES, clone: CLONES };

/**
 * The objects of the namespace, kept current from watches (reopened from a fresh list if a
 * stream ends). until() checks its condition at once and again on every event, and resolves
 * with now() taken when the event that satisfied it was parsed: that is the "done" time of a
 * timed operation, as `kubectl wait` would see it.
 */
class Cache {
  private readonly objs = new Map<Kind, Map<string, KubeObject>>();
  private readonly waiters = new Set<() => void>();
  private readonly watches: Watch[] = [];
  private closed = false;
  relists = 0;

  constructor(private readonly v: Vessel) {}

  async start(): Promise<void> {
    await Promise.all((Object.keys(FOLLOWED) as Kind[]).map((k) => this.follow(k)));
  }

  private async follow(kind: Kind): Promise<void> {
    const list = await this.v.client.list(FOLLOWED[kind], { namespace: NS });
    const map = new Map<string, KubeObject>(list.items.map((o) => [o.metadata?.name ?? '', o]));
    this.objs.set(kind, map);
    this.poke();
    const w: Watch = this.v.client.watchResource(FOLLOWED[kind], { namespace: NS, resourceVersion: list.metadata?.resourceVersion }, (ev) => {
      if (ev.type === 'ERROR') {
        w.close();
        return;
      }
      const name = ev.object?.metadata?.name;
      if (!name) return;
      if (ev.type === 'DELETED') map.delete(name);
      else if (ev.type === 'ADDED' || ev.type === 'MODIFIED') map.set(name, ev.object);
      else return;
      this.poke();
    });
    this.watches.push(w);
    const again = () => {
      if (this.closed) return;
      this.relists++;
      void this.follow(kind).catch(() => setTimeout(again, 200));
    };
    w.done.then(again, again);
  }

  private poke(): void {
    for (const w of [...this.waiters]) w();
  }

  get(kind: Kind, name: string): KubeObject | undefined {
    return this.objs.get(kind)?.get(name);
  }

  list(kind: Kind): KubeObject[] {
    return [...(this.objs.get(kind)?.values() ?? [])];
  }

  /** Resolves with check()'s first defined value and when it was seen; rejects if check throws or after timeoutMs. */
  until<T>(what: string, check: () => T | undefined, timeoutMs: number): Promise<{ value: T; at: number }> {
    return new Promise((resolve, reject) => {
      const test = (): void => {
        let value: T | undefined;
        try {
          value = check();
        } catch (e) {
          finish();
          reject(e instanceof Error ? e : new Error(String(e)));
          return;
        }
        if (value !== undefined) {
          finish();
          resolve({ value, at: now() });
        }
      };
      const finish = (): void => {
        clearTimeout(timer);
        this.waiters.delete(test);
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`${what}: not seen within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.add(test);
      test();
    });
  }

  close(): void {
    this.closed = true;
    for (const w of this.watches) w.close();
  }
}

// ---------------------------------------------------------------- the operations

interface Ctx {
  v: Vessel;
  cache: Cache;
  problems: string[];
  dir: string;
}

function vmManifest(name: string, storage: string, memory: string): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: NS },
    spec: {
      // Manual: started and stopped with the subresources only, so clones and restored copies
      // (which get the recorded spec) stay stopped.
      runStrategy: 'Manual',
      template: {
        spec: {
          terminationGracePeriodSeconds: GRACE_S,
          domain: { resources: { requests: { memory } }, devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }] } },
          volumes: [{ name: 'root', dataVolume: { name: `${name}-root` } }],
        },
      },
      dataVolumeTemplates: [
        {
          metadata: { name: `${name}-root` },
          spec: { sourceRef: { kind: 'DataSource', name: 'tiny', namespace: IMAGES }, storage: { resources: { requests: { storage } } } },
        },
      ],
    },
  };
}

const bound = (pvc: KubeObject | undefined) => !!pvc && phaseOf(pvc) === 'Bound' && !!volumePath(pvc);

/** Creates the VM (not started) and waits until its root claim is Bound; returns the volume path. */
async function createVm(c: Ctx, name: string, storage: string, memory = '128Mi'): Promise<string> {
  await c.v.client.create(VMS, vmManifest(name, storage, memory), { namespace: NS });
  const { value } = await c.cache.until(
    `claim ${name}-root Bound`,
    () => {
      const pvc = c.cache.get('pvc', `${name}-root`);
      return bound(pvc) ? volumePath(pvc!) : undefined;
    },
    OP_TIMEOUT_MS,
  );
  return value;
}

const vmAction = (c: Ctx, name: string, action: 'start' | 'stop') =>
  c.v.client.request('PUT', `/apis/subresources.kubevirt.io/v1/namespaces/${NS}/virtualmachines/${name}/${action}`, { body: {} });

async function waitVmiRunning(c: Ctx, name: string): Promise<number> {
  return (
    await c.cache.until(
      `VMI ${name} Running`,
      () => {
        const vmi = c.cache.get('vmi', name);
        if (phaseOf(vmi) === 'Failed') throw new Error(`VMI ${name} Failed: ${JSON.stringify(statusOf(vmi).conditions ?? [])}`);
        return phaseOf(vmi) === 'Running' ? true : undefined;
      },
      BOOT_TIMEOUT_MS,
    )
  ).at;
}

async function stopVm(c: Ctx, name: string): Promise<void> {
  await vmAction(c, name, 'stop');
  await c.cache.until(`VMI ${name} gone`, () => (c.cache.get('vmi', name) ? undefined : true), STOP_TIMEOUT_MS);
}

/** Deletes an object (NotFound is fine) and waits until the watch shows it gone. */
async function deleteObj(c: Ctx, kind: Kind, name: string): Promise<void> {
  await c.v.client.delete(FOLLOWED[kind], name, { namespace: NS }).catch((e: unknown) => {
    if (!isNotFound(e)) throw e;
  });
  await c.cache.until(`${kind} ${name} gone`, () => (c.cache.get(kind, name) ? undefined : true), OP_TIMEOUT_MS);
}

/** Deletes a VM and waits until it, its VMI and the given claims (so their volumes) are gone. */
async function deleteVm(c: Ctx, name: string, claims: string[]): Promise<void> {
  await deleteObj(c, 'vm', name);
  await c.cache.until(
    `VMI and claims of ${name} gone`,
    () => (c.cache.get('vmi', name) || claims.some((cl) => c.cache.get('pvc', cl)) ? undefined : true),
    OP_TIMEOUT_MS,
  );
}

/** Deletes a snapshot and waits until its content is gone too (its files deleted or merged). */
async function deleteSnapshot(c: Ctx, name: string): Promise<void> {
  await deleteObj(c, 'snap', name);
  await c.cache.until(
    `content of snapshot ${name} gone`,
    () => (c.cache.list('content').some((x) => (x.spec as Obj | undefined)?.virtualMachineSnapshotName === name) ? undefined : true),
    OP_TIMEOUT_MS,
  );
}

interface SnapshotResult {
  ms: number;
  file: string;
  memoryFile?: string;
  phases: string;
}

async function snapshot(c: Ctx, vm: string, name: string, withMemory = false): Promise<SnapshotResult> {
  const seen = new Map<string, number>();
  const t0 = now();
  await c.v.client.create(
    SNAPSHOTS,
    {
      apiVersion: 'snapshot.kubevirt.io/v1beta1',
      kind: 'VirtualMachineSnapshot',
      metadata: { name, namespace: NS, ...(withMemory ? { annotations: { [WITH_MEMORY]: 'true' } } : {}) },
      spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: vm } },
    },
    { namespace: NS },
  );
  const { value: snap, at } = await c.cache.until(
    `snapshot ${name} Succeeded`,
    () => {
      const s = c.cache.get('snap', name);
      const ph = phaseOf(s);
      if (ph && !seen.has(ph)) seen.set(ph, now() - t0);
      if (ph === 'Failed') throw new Error(`snapshot ${name} Failed: ${JSON.stringify(statusOf(s).error ?? statusOf(s).conditions ?? {})}`);
      return ph === 'Succeeded' ? s : undefined;
    },
    OP_TIMEOUT_MS,
  );
  const contentName = String(statusOf(snap).virtualMachineSnapshotContentName ?? '');
  const { value: content } = await c.cache.until(`content ${contentName}`, () => c.cache.get('content', contentName), 30_000);
  const files = JSON.parse(annotationsOf(content)[SNAPSHOT_FILES] ?? '{}') as Record<string, string>;
  if (!files.root) throw new Error(`snapshot ${name}: its content names no file for volume root`);
  return {
    ms: at - t0,
    file: files.root,
    memoryFile: annotationsOf(content)[MEMORY_FILE],
    phases: [...seen].map(([ph, t]) => `${ph} ${t.toFixed(0)}`).join(', '),
  };
}

/** Waits until the named claims are Bound (the agent made their volumes); returns when, and the paths. */
async function claimsBound(c: Ctx, claims: string[], what: string, timeoutMs = OP_TIMEOUT_MS): Promise<{ at: number; paths: string[] }> {
  try {
    const { at, value } = await c.cache.until(
      `${what}: claims ${claims.join(', ')} Bound`,
      () => {
        const pvcs = claims.map((cl) => c.cache.get('pvc', cl));
        return pvcs.every(bound) ? pvcs.map((x) => volumePath(x!)!) : undefined;
      },
      timeoutMs,
    );
    return { at, paths: value };
  } catch (e) {
    // Say why: the agent's last warning about the claim.
    const evs = (await c.v.client.list(EVENTS, { namespace: NS }).catch(() => ({ items: [] as KubeObject[] }))).items.filter(
      (x) => claims.includes(String((x.involvedObject as Obj | undefined)?.name)) && x.type === 'Warning',
    );
    const last = evs.at(-1);
    throw new Error(`${errText(e)}${last ? `; last warning on the claim: ${String(last.reason)}: ${String(last.message)} (×${String(last.count ?? 1)})` : ''}`);
  }
}

interface RestoreResult {
  ms: number;
  boundMs?: number;
  claims: string[];
  paths: string[];
}

/** A VirtualMachineRestore of `snap` into `target` (the snapshot's stopped VM, or a new VM): POST → complete (→ new claims Bound). */
async function restore(c: Ctx, snap: string, target: string, name: string, newVm: boolean): Promise<RestoreResult> {
  const t0 = now();
  await c.v.client.create(
    RESTORES,
    {
      apiVersion: 'snapshot.kubevirt.io/v1beta1',
      kind: 'VirtualMachineRestore',
      metadata: { name, namespace: NS },
      spec: { target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: target }, virtualMachineSnapshotName: snap },
    },
    { namespace: NS },
  );
  const { value: r, at } = await c.cache.until(
    `restore ${name} complete`,
    () => {
      const o = c.cache.get('restore', name);
      return statusOf(o).complete === true ? o : undefined;
    },
    OP_TIMEOUT_MS,
  );
  const claims = ((statusOf(r).restores as { persistentVolumeClaim?: string }[] | undefined) ?? []).map((x) => String(x.persistentVolumeClaim ?? ''));
  if (!newVm) return { ms: at - t0, claims, paths: [] };
  const b = await claimsBound(c, claims, `restore ${name}`);
  return { ms: at - t0, boundMs: b.at - t0, claims, paths: b.paths };
}

interface CloneResult {
  ms: number;
  /** NaN when the claims were not Bound within boundTimeoutMs (then boundError says why). */
  boundMs: number;
  boundError?: string;
  claims: string[];
  paths: string[];
  phases: string;
}

/** A VirtualMachineClone of a VM or a snapshot into the new VM `target`: POST → Succeeded, and → the new VM's claims Bound. */
async function clone(
  c: Ctx,
  source: { kind: 'VirtualMachine' | 'VirtualMachineSnapshot'; name: string },
  target: string,
  full: boolean,
  boundTimeoutMs = OP_TIMEOUT_MS,
): Promise<CloneResult> {
  const name = `clone-${target}`;
  const seen = new Map<string, number>();
  const t0 = now();
  await c.v.client.create(
    CLONES,
    {
      apiVersion: 'clone.kubevirt.io/v1beta1',
      kind: 'VirtualMachineClone',
      metadata: { name, namespace: NS, ...(full ? { annotations: { [CLONE_DISK_TYPE]: 'full' } } : {}) },
      spec: {
        source: { apiGroup: source.kind === 'VirtualMachine' ? 'kubevirt.io' : 'snapshot.kubevirt.io', kind: source.kind, name: source.name },
        target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: target },
      },
    },
    { namespace: NS },
  );
  const { at } = await c.cache.until(
    `clone ${name} Succeeded`,
    () => {
      const o = c.cache.get('clone', name);
      const ph = phaseOf(o);
      if (ph && !seen.has(ph)) seen.set(ph, now() - t0);
      if (ph === 'Failed') throw new Error(`clone ${name} Failed: ${JSON.stringify(statusOf(o).conditions ?? [])}`);
      return ph === 'Succeeded' ? true : undefined;
    },
    OP_TIMEOUT_MS,
  );
  const { value: claims } = await c.cache.until(
    `VM ${target}`,
    () => {
      const vm = c.cache.get('vm', target);
      if (!vm) return undefined;
      const vols =
        (vm.spec as { template?: { spec?: { volumes?: { persistentVolumeClaim?: { claimName?: string }; dataVolume?: { name?: string } }[] } } }).template?.spec
          ?.volumes ?? [];
      return vols.map((x) => x.persistentVolumeClaim?.claimName ?? x.dataVolume?.name).filter((x): x is string => !!x);
    },
    30_000,
  );
  const phases = () => [...seen].map(([ph, t]) => `${ph} ${t.toFixed(0)}`).join(', ');
  try {
    const b = await claimsBound(c, claims, `clone ${name}`, boundTimeoutMs);
    seen.set('claims Bound', b.at - t0);
    return { ms: at - t0, boundMs: b.at - t0, claims, paths: b.paths, phases: phases() };
  } catch (e) {
    return { ms: at - t0, boundMs: NaN, boundError: errText(e), claims, paths: [], phases: phases() };
  }
}

const handLinked = (file: string, dest: string) =>
  timed(async () => {
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', file, '-F', 'qcow2', dest]);
  });

/** Snapshot files and memory files in the namespace's pool directory. */
async function snapshotFiles(c: Ctx): Promise<string[]> {
  const dir = join(c.v.dataDir, 'pools', 'local', NS);
  const out = await sh('ls', ['-1', dir]).catch(() => '');
  return out.split('\n').filter((f) => f.includes('@'));
}

// ---------------------------------------------------------------- serial console

const serialFile = (c: Ctx, vm: string) => join(c.v.dataDir, 'vms', NS, vm, 'serial.log');
const runDirOf = (c: Ctx, vm: string) => join(c.v.dataDir, 'vms', NS, vm);
const fileSize = (f: string) =>
  stat(f).then(
    (s) => s.size,
    () => 0,
  );

async function readFrom(file: string, offset: number): Promise<string> {
  const fh = await open(file, 'r').catch(() => undefined);
  if (!fh) return '';
  try {
    const { size } = await fh.stat();
    if (size <= offset) return '';
    const buf = Buffer.alloc(size - offset);
    await fh.read(buf, 0, buf.length, offset);
    return buf.toString('latin1');
  } finally {
    await fh.close();
  }
}

const COUNTER = /VESSEL-COUNTER (\d+)\r?\n/g;
const countersIn = (text: string) => [...text.matchAll(COUNTER)].map((m) => Number(m[1]));

/**
 * Polls serial.log past `offset` every 10 ms: when the first new byte appeared, and the first
 * complete `VESSEL-COUNTER n` line (time, n, and the text up to then).
 */
async function nextCounter(file: string, offset: number, timeoutMs: number): Promise<{ byte: number; line: number; counter: number; text: string }> {
  const deadline = now() + timeoutMs;
  let byte: number | undefined;
  for (;;) {
    const text = await readFrom(file, offset);
    if (text.length > 0) byte ??= now();
    const n = countersIn(text)[0];
    if (n !== undefined) return { byte: byte ?? now(), line: now(), counter: n, text };
    if (now() > deadline) throw new Error(`no VESSEL-COUNTER line in ${file} within ${timeoutMs} ms (after byte ${offset})`);
    await sleep(10);
  }
}

async function lastCounter(file: string): Promise<number> {
  return Math.max(0, ...countersIn(await readFile(file, 'latin1').catch(() => '')));
}

async function waitText(file: string, offset: number, text: string, timeoutMs: number): Promise<void> {
  const deadline = now() + timeoutMs;
  while (!(await readFrom(file, offset)).includes(text)) {
    if (now() > deadline) throw new Error(`"${text}" did not appear in ${file} within ${timeoutMs} ms`);
    await sleep(100);
  }
}

/**
 * When the guest runs again: connects to its serial socket (retrying while QEMU starts) and
 * types `#` every 20 ms until the guest's tty echoes one back. Sharper than the next counter
 * line, which the guest prints once a second. Resolves with now() at the echo.
 */
async function echoProbe(runDir: string, timeoutMs: number): Promise<number> {
  const deadline = now() + timeoutMs;
  const path = runDirFiles(runDir).serial;
  while (now() < deadline) {
    const sock = await new Promise<Socket | undefined>((resolve) => {
      const x = createConnection({ path });
      x.once('connect', () => resolve(x));
      x.once('error', () => {
        x.destroy();
        resolve(undefined);
      });
    });
    if (!sock) {
      await sleep(10);
      continue;
    }
    sock.on('error', () => undefined);
    try {
      const at = await new Promise<number | undefined>((resolve) => {
        const timer = setInterval(() => {
          if (now() > deadline) {
            clearInterval(timer);
            resolve(undefined);
          } else sock.write('#');
        }, 20);
        sock.on('data', (d: Buffer) => {
          if (d.includes(0x23)) {
            clearInterval(timer);
            resolve(now());
          }
        });
        sock.once('close', () => {
          clearInterval(timer);
          resolve(undefined);
        });
        sock.write('#');
      });
      if (at !== undefined) return at;
    } finally {
      sock.destroy();
    }
  }
  throw new Error(`the guest of ${runDir} did not echo on its serial console within ${timeoutMs} ms`);
}

/**
 * Fills `bytes` of the guest's memory with non-zero data (a file in its /run tmpfs), typed on
 * its serial console: the tiny guest starts a root shell on the console after an Enter.
 */
async function fillGuestMemory(runDir: string, bytes: number): Promise<number> {
  if (bytes <= 0) return 0;
  const file = runDirFiles(runDir).serialLog;
  const offset = await fileSize(file);
  const t0 = now();
  const sock = await attachSerial(runDir);
  sock.on('data', () => undefined);
  sock.on('error', () => undefined);
  try {
    sock.write('\n');
    await sleep(1000);
    // `yes | head` is slow under TCG (about 0.6 s per MiB here), so one chunk is made that way
    // and copied by a single cat of at most 64 arguments: busybox ash's line editor takes 1024
    // characters at most. The marker is computed by the shell, so the echoed command line does
    // not match it.
    const chunk = Math.max(1, Math.ceil(bytes / MiB / 64)) * MiB;
    const copies = Math.max(1, Math.round(bytes / chunk));
    sock.write(
      `yes 0123456789abcdef0123456789abcdef | head -c ${chunk} > /run/a; cat${' /run/a'.repeat(copies)} > /run/bench-fill; rm /run/a; echo VESSEL-FILL-$((40 + 2)) $(du -k /run/bench-fill)\n`,
    );
    await waitText(file, offset, 'VESSEL-FILL-42', 300_000);
  } finally {
    sock.destroy();
  }
  return now() - t0;
}

// ---------------------------------------------------------------- linked: snapshot, restore, linked clone; 1 GiB vs 20 GiB

const LINKED_SIZES = [
  { label: '1 GiB', gib: 1 },
  { label: '20 GiB', gib: 20 },
];

export async function runLinked(c: Ctx): Promise<BenchResult> {
  const started = now();
  const n = envPos('BENCH_SNAPSHOT_N', 5);
  const figures: Figure[] = [];
  const problems = c.problems;
  const hand = join(c.dir, 'hand');
  await mkdir(hand, { recursive: true });
  /** samples[op][gib] */
  const samples = new Map<string, Map<number, number[]>>();
  const rec = (op: string, gib: number, v: number) => {
    const m = samples.get(op) ?? new Map<number, number[]>();
    samples.set(op, m);
    m.set(gib, [...(m.get(gib) ?? []), v]);
  };
  const detail = new Map<string, string[]>();
  const note = (k: string, s: string) => detail.set(k, [...(detail.get(k) ?? []), s]);
  try {
    const t = now();
    const disks = new Map<number, string>();
    for (const s of LINKED_SIZES) disks.set(s.gib, await createVm(c, `lk-${s.gib}g`, `${s.gib}Gi`));
    for (const s of LINKED_SIZES) {
      const info = await qemuImg.info(disks.get(s.gib)!, { format: 'qcow2' });
      console.log(
        `  linked: VM lk-${s.gib}g, disk ${disks.get(s.gib)} (virtual ${(info.virtualSize / GiB).toFixed(0)} GiB, backing ${await backingFile(disks.get(s.gib)!)})`,
      );
    }
    console.log(`  linked: setup ${ms(now() - t)}`);

    const offline = async (gib: number, i: number) => {
      const vm = `lk-${gib}g`;
      const tag = `${gib}g-${i < 0 ? 'w' : i}`;
      const measured = i >= 0;
      const r = (op: string, v: number) => {
        if (measured) rec(op, gib, v);
      };
      const handFirst = i % 2 === 0;
      const byHand = async () => {
        const dest = join(hand, `lk-${tag}.qcow2`);
        r('hand', await handLinked(disks.get(gib)!, dest));
        await rm(dest, { force: true });
      };
      if (handFirst) {
        await sleep(GAP_MS);
        await byHand();
      }
      await sleep(GAP_MS);
      const s = await snapshot(c, vm, `off-${tag}`);
      r('snapshot offline', s.ms);
      if (measured) note(`snapshot offline:${gib}`, s.phases);
      await sleep(GAP_MS);
      const rin = await restore(c, `off-${tag}`, vm, `rin-${tag}`, false);
      r('restore in place', rin.ms);
      await sleep(GAP_MS);
      const rnew = await restore(c, `off-${tag}`, `new-${tag}`, `rnew-${tag}`, true);
      r('restore to a new VM', rnew.boundMs!);
      r('restore to a new VM (complete)', rnew.ms);
      await sleep(GAP_MS);
      const cl = await clone(c, { kind: 'VirtualMachineSnapshot', name: `off-${tag}` }, `lc-${tag}`, false);
      if (cl.boundError) throw new Error(cl.boundError);
      r('linked clone of a snapshot', cl.boundMs);
      r('linked clone of a snapshot (Succeeded)', cl.ms);
      if (measured) note(`linked clone of a snapshot:${gib}`, cl.phases);
      if (!handFirst) {
        await sleep(GAP_MS);
        await byHand();
      }
      if (i === 0) {
        // Outside the timing: the new disks are linked clones of the snapshot file, of the claim's size.
        for (const [what, path] of [
          ['restore to a new VM', rnew.paths[0]],
          ['linked clone', cl.paths[0]],
        ] as const) {
          const backing = path && (await backingFile(path));
          if (backing !== s.file)
            problems.push(`linked ${gib} GiB: the ${what}'s disk ${path ?? '(none)'} is backed by ${backing ?? 'nothing'}, not the snapshot file ${s.file}`);
          const size = path ? (await qemuImg.info(path, { format: 'qcow2' })).virtualSize : 0;
          if (size !== gib * GiB) problems.push(`linked ${gib} GiB: the ${what}'s disk has virtual size ${size}, not ${gib * GiB}`);
        }
      }
      console.log(
        `  linked ${String(gib).padStart(2)} GiB offline ${tag}: hand ${ms(samples.get('hand')?.get(gib)?.at(-1) ?? NaN)}, snapshot ${ms(s.ms)}, restore in place ${ms(rin.ms)}, restore to new VM ${ms(rnew.ms)} (Bound ${ms(rnew.boundMs!)}), linked clone ${ms(cl.ms)} (Bound ${ms(cl.boundMs)})`,
      );
      await deleteVm(c, `new-${tag}`, rnew.claims);
      await deleteVm(c, `lc-${tag}`, cl.claims);
      for (const x of [`rin-${tag}`, `rnew-${tag}`]) await deleteObj(c, 'restore', x);
      await deleteObj(c, 'clone', `clone-lc-${tag}`);
      await deleteSnapshot(c, `off-${tag}`);
    };

    await offline(1, -1); // warm-up, not counted
    for (let i = 0; i < n; i++) {
      const order = i % 2 === 0 ? LINKED_SIZES : [...LINKED_SIZES].reverse();
      for (const s of order) await offline(s.gib, i);
    }

    // Online: both VMs running (the guest counting, i.e. writing to its disk).
    for (const s of LINKED_SIZES) {
      const vm = `lk-${s.gib}g`;
      const off = await fileSize(serialFile(c, vm));
      await vmAction(c, vm, 'start');
      await waitVmiRunning(c, vm);
      await nextCounter(serialFile(c, vm), off, BOOT_TIMEOUT_MS);
    }
    let onlineCloneBroken = false;
    let onlineCloneUnbound = 0;
    const tmpSnapshotsGone = () =>
      c.cache.until(
        'temporary clone snapshots gone',
        () => (c.cache.list('snap').some((x) => x.metadata?.name?.startsWith('tmp-snapshot-')) ? undefined : true),
        OP_TIMEOUT_MS,
      );
    const online = async (gib: number, i: number) => {
      const vm = `lk-${gib}g`;
      const tag = `${gib}g-on-${i < 0 ? 'w' : i}`;
      const measured = i >= 0;
      const r = (op: string, v: number) => {
        if (measured) rec(op, gib, v);
      };
      await sleep(GAP_MS);
      const s = await snapshot(c, vm, `on-${tag}`);
      r('snapshot online', s.ms);
      if (measured) note(`snapshot online:${gib}`, s.phases);
      // The baseline on the file just frozen (QEMU has it open read-only as a backing file).
      await sleep(GAP_MS);
      const dest = join(hand, `on-${tag}.qcow2`);
      r('hand online', await handLinked(s.file, dest));
      await rm(dest, { force: true });
      await sleep(GAP_MS);
      // Once the new disk has failed to appear, later rounds wait for it only briefly.
      const cl = await clone(c, { kind: 'VirtualMachine', name: vm }, `oc-${tag}`, false, onlineCloneBroken ? 3_000 : 30_000);
      if (cl.boundError && !onlineCloneBroken) {
        onlineCloneBroken = true;
        problems.push(
          `linked clone of a running VM (${gib} GiB): the clone is Succeeded but its disk never appears while the source VM runs: ${cl.boundError}`,
        );
      }
      if (!cl.boundError) r('linked clone of a running VM', cl.boundMs);
      else if (measured) onlineCloneUnbound++;
      r('linked clone of a running VM (Succeeded)', cl.ms);
      if (measured) note(`linked clone of a running VM:${gib}`, cl.phases);
      console.log(
        `  linked ${String(gib).padStart(2)} GiB online ${tag}: snapshot ${ms(s.ms)}, hand on the snapshot file ${ms(samples.get('hand online')?.get(gib)?.at(-1) ?? NaN)}, clone of the running VM Succeeded ${ms(cl.ms)} (Bound ${cl.boundError ? 'never' : ms(cl.boundMs)})`,
      );
      await deleteVm(c, `oc-${tag}`, cl.claims);
      await deleteObj(c, 'clone', `clone-oc-${tag}`);
      await tmpSnapshotsGone();
      await deleteSnapshot(c, `on-${tag}`);
    };
    await online(1, -1);
    for (let i = 0; i < n; i++) {
      const order = i % 2 === 0 ? LINKED_SIZES : [...LINKED_SIZES].reverse();
      for (const s of order) await online(s.gib, i);
    }
    for (const s of LINKED_SIZES) await stopVm(c, `lk-${s.gib}g`);

    const get = (op: string, gib: number) => samples.get(op)?.get(gib) ?? [];
    const [a, b] = LINKED_SIZES;
    figures.push({
      name: 'hand qemu-img create -b, 20 GiB / 1 GiB (p50)',
      ratio: ratio(p50(get('hand', b.gib)), p50(get('hand', a.gib))),
      detail: `offline, on the VM's disk, n=${n}: 1 GiB ${p50p95(get('hand', a.gib))}; 20 GiB ${p50p95(get('hand', b.gib))}; online, on the snapshot file just taken: 1 GiB ${p50p95(get('hand online', a.gib))}; 20 GiB ${p50p95(get('hand online', b.gib))}`,
    });
    const ops: { op: string; base: string; extra?: string; what: string }[] = [
      { op: 'snapshot offline', base: 'hand', what: 'VirtualMachineSnapshot of the stopped VM, POST → Succeeded' },
      { op: 'restore in place', base: 'hand', what: 'VirtualMachineRestore into the same stopped VM, POST → complete' },
      { op: 'restore to a new VM', base: 'hand', extra: 'restore to a new VM (complete)', what: 'VirtualMachineRestore into a new VM, POST → new claim Bound' },
      {
        op: 'linked clone of a snapshot',
        base: 'hand',
        extra: 'linked clone of a snapshot (Succeeded)',
        what: 'VirtualMachineClone from the snapshot, POST → new claim Bound',
      },
      { op: 'snapshot online', base: 'hand online', what: 'VirtualMachineSnapshot of the running VM, POST → Succeeded' },
      {
        op: 'linked clone of a running VM',
        base: 'hand online',
        extra: 'linked clone of a running VM (Succeeded)',
        what: 'VirtualMachineClone from the running VM (takes an online snapshot), POST → new claim Bound',
      },
    ];
    for (const o of ops) {
      const extra = (gib: number) => {
        if (!o.extra) return '';
        const label = o.extra.endsWith('(complete)') ? 'complete' : 'Succeeded';
        return `; ${label} ${p50p95(get(o.extra, gib))}`;
      };
      figures.push({
        name: `${o.op}, 20 GiB / 1 GiB (p50)`,
        ratio: ratio(p50(get(o.op, b.gib)), p50(get(o.op, a.gib))),
        detail:
          `${o.what}, n=${n}: 1 GiB ${p50p95(get(o.op, a.gib))}${extra(a.gib)}; 20 GiB ${p50p95(get(o.op, b.gib))}${extra(b.gib)}` +
          (o.op === 'linked clone of a running VM' && onlineCloneUnbound
            ? `; the new claim was not Bound in ${onlineCloneUnbound} of ${n * 2} rounds (see PROBLEM)`
            : ''),
      });
      for (const s of LINKED_SIZES) {
        const phases = detail.get(`${o.op}:${s.gib}`);
        figures.push({
          name: `${o.op} / hand qemu-img create -b, ${s.label} (p50)`,
          ratio: ratio(p50(get(o.op, s.gib)), p50(get(o.base, s.gib))),
          detail: `${p50p95(get(o.op, s.gib))} vs ${p50p95(get(o.base, s.gib))}${phases ? `; ms after the POST, each round: ${phases.map((x) => `[${x}]`).join(' ')}` : ''}`,
        });
      }
    }
    console.log(`  ${loadLine()}`);
  } catch (e) {
    problems.push(`linked: ${errText(e)}`);
  }
  return {
    bench: `snapshot linked: snapshot / restore / linked clone, 1 GiB vs 20 GiB disk, ${n} rounds`,
    figures,
    problems,
    seconds: (now() - started) / 1000,
  };
}

// ---------------------------------------------------------------- full: full clone vs qemu-img convert by hand

/** Claims big enough for 2 GiB of data: a full clone of it takes seconds here. */
const FULL_SIZES = [
  { label: '4 GiB', gib: 4 },
  { label: '20 GiB', gib: 20 },
];

export async function runFull(c: Ctx): Promise<BenchResult> {
  const started = now();
  const n = envPos('BENCH_SNAPSHOT_N', 5);
  const dataMib = envPos('BENCH_SNAPSHOT_DATA_MIB', 2048);
  const figures: Figure[] = [];
  const problems = c.problems;
  const hand = join(c.dir, 'hand-full');
  await mkdir(hand, { recursive: true });
  const vessel = new Map<number, number[]>(),
    vesselSucceeded = new Map<number, number[]>(),
    plain = new Map<number, number[]>(),
    direct = new Map<number, number[]>();
  const phases = new Map<number, string[]>();
  const push = (m: Map<number, number[]>, gib: number, v: number) => m.set(gib, [...(m.get(gib) ?? []), v]);
  const sources = new Map<number, string>();
  try {
    for (const s of FULL_SIZES) {
      const t = now();
      const disk = await createVm(c, `fc-${s.gib}g`, `${s.gib}Gi`);
      // Data past the guest's own 128 MiB (the VM is stopped: nothing has the file open), in
      // writes of at most 1 GiB (qemu-io's limit is just under 2 GiB).
      const offset = 256 * MiB;
      if (offset + dataMib * MiB > s.gib * GiB) throw new Error(`BENCH_SNAPSHOT_DATA_MIB=${dataMib} does not fit in ${s.label} after 256 MiB`);
      const writes: string[] = [];
      for (let at = 0; at < dataMib; at += 1024) writes.push('-c', `write -q -P 0xab ${offset + at * MiB} ${Math.min(1024, dataMib - at) * MiB}`);
      await sh('qemu-io', ['-f', 'qcow2', ...writes, disk]);
      const snap = await snapshot(c, `fc-${s.gib}g`, `fsrc-${s.gib}g`);
      sources.set(s.gib, snap.file);
      const allocated = (await stat(snap.file)).blocks * 512;
      console.log(
        `  full: VM fc-${s.gib}g with ${dataMib} MiB written, snapshot file ${snap.file} (${mib(allocated)} allocated, backed by ${await backingFile(snap.file)}) in ${ms(now() - t)}`,
      );
    }
    await sh('sync', []);

    const byHand = async (gib: number, tag: string, flags: 'plain' | 'direct') => {
      const dest = join(hand, `${tag}-${flags}.qcow2`);
      await sleep(GAP_MS);
      const took = await timed(async () => {
        if (flags === 'plain') await sh('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', sources.get(gib)!, dest]);
        else {
          await sh('qemu-img', ['convert', '-t', 'none', '-f', 'qcow2', '-O', 'qcow2', sources.get(gib)!, dest]);
          await fsyncFile(dest);
        }
      });
      await rm(dest, { force: true });
      await sh('sync', []);
      return took;
    };
    const viaApi = async (gib: number, tag: string, check: boolean) => {
      await sleep(GAP_MS);
      const cl = await clone(c, { kind: 'VirtualMachineSnapshot', name: `fsrc-${gib}g` }, `fcl-${tag}`, true);
      if (check) {
        const path = cl.paths[0];
        const backing = await backingFile(path);
        if (backing) problems.push(`full ${gib} GiB: the full clone ${path} has a backing file ${backing}`);
        const cmp = await qemuImg.compare(sources.get(gib)!, path, { formatA: 'qcow2', formatB: 'qcow2' });
        if (!cmp.identical) problems.push(`full ${gib} GiB: the full clone differs from the snapshot: ${cmp.message}`);
      }
      await deleteVm(c, `fcl-${tag}`, cl.claims);
      await deleteObj(c, 'clone', `clone-fcl-${tag}`);
      await sh('sync', []);
      return cl;
    };

    // Warm-up (not counted): one of each on the 1 GiB snapshot.
    const [small, large] = FULL_SIZES.map((x) => x.gib);
    await byHand(small, 'w', 'plain');
    await viaApi(small, `${small}g-w`, false);
    for (let i = 0; i < n; i++) {
      const order = i % 2 === 0 ? FULL_SIZES : [...FULL_SIZES].reverse();
      for (const s of order) {
        const tag = `${s.gib}g-${i}`;
        const steps: (() => Promise<void>)[] = [
          async () => {
            push(plain, s.gib, await byHand(s.gib, tag, 'plain'));
          },
          async () => {
            push(direct, s.gib, await byHand(s.gib, tag, 'direct'));
          },
          async () => {
            const cl = await viaApi(s.gib, tag, i === 0);
            push(vessel, s.gib, cl.boundMs);
            push(vesselSucceeded, s.gib, cl.ms);
            phases.set(s.gib, [...(phases.get(s.gib) ?? []), cl.phases]);
          },
        ];
        if (i % 2 === 1) steps.reverse();
        for (const st of steps) await st();
        const last = (m: Map<number, number[]>) => ms(m.get(s.gib)!.at(-1)!);
        console.log(
          `  full ${String(s.gib).padStart(2)} GiB round ${i}: vessel ${last(vessel)}, hand convert ${last(plain)}, hand convert -t none + fsync ${last(direct)}`,
        );
      }
    }
    for (const s of FULL_SIZES) {
      const g = s.gib;
      figures.push({
        name: `full clone / hand qemu-img convert, ${s.label} (p50)`,
        ratio: ratio(p50(vessel.get(g)!), p50(plain.get(g)!)),
        detail:
          `goal <= 1.1: ${p50(vessel.get(g)!) <= 1.1 * p50(plain.get(g)!) ? 'met' : 'NOT met'}. VirtualMachineClone (clone.vessel.io/type: full) from the snapshot, POST → new claim Bound, n=${n}: ${p50p95(vessel.get(g)!)} ` +
          `(clone Succeeded ${p50p95(vesselSucceeded.get(g)!)}); qemu-img convert -O qcow2 of the snapshot file (${dataMib} MiB written + tiny), page cache, no fsync: ${p50p95(plain.get(g)!)}; ms after the POST, each round: ${phases
            .get(g)!
            .map((x) => `[${x}]`)
            .join(' ')}`,
      });
      figures.push({
        name: `full clone / hand convert -t none + fsync, ${s.label} (p50)`,
        ratio: ratio(p50(vessel.get(g)!), p50(direct.get(g)!)),
        detail: `the agent's own flags by hand (qemu-img convert -t none, then fsync): ${p50p95(direct.get(g)!)}; p50(vessel) − p50(this) ${signedMs(p50(vessel.get(g)!) - p50(direct.get(g)!))}`,
      });
    }
    figures.push({
      name: `full clone ${large} GiB / ${small} GiB (p50)`,
      ratio: ratio(p50(vessel.get(large)!), p50(vessel.get(small)!)),
      detail: `same data, bigger claim; by hand ${fmtRatio(ratio(p50(plain.get(large)!), p50(plain.get(small)!)))}`,
    });
    for (const s of FULL_SIZES) await deleteSnapshot(c, `fsrc-${s.gib}g`);
    console.log(`  ${loadLine()}`);
  } catch (e) {
    problems.push(`full: ${errText(e)}`);
  }
  return {
    bench: `snapshot full clone: ${dataMib} MiB of data, ${FULL_SIZES.map((x) => x.label).join(' and ')} claims, ${n} rounds`,
    figures,
    problems,
    seconds: (now() - started) / 1000,
  };
}

// ---------------------------------------------------------------- memory: snapshot with memory, resume vs cold boot

/** 1 TiB/s: no limit in practice. */
const UNLIMITED_BANDWIDTH = 2 ** 40;
const MEM_SIZES = [
  { label: '256 MiB', request: '256Mi', bytes: 256 * MiB, name: 'mem-256m' },
  { label: '1 GiB', request: '1Gi', bytes: GiB, name: 'mem-1g' },
];

async function pollMigration(qmp: QmpClient, incoming: boolean, timeoutMs: number): Promise<void> {
  const deadline = now() + timeoutMs;
  for (;;) {
    if (incoming) {
      const { status } = await qmp.execute<{ status: string }>('query-status');
      if (status !== 'inmigrate') return;
    } else {
      const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (info.status === 'completed') return;
      if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`migration ${info.status}: ${info['error-desc'] ?? ''}`);
    }
    if (now() > deadline) throw new Error(`migration not done within ${timeoutMs} ms`);
    await sleep(10);
  }
}

export async function runMemory(c: Ctx): Promise<BenchResult> {
  const started = now();
  const n = envPos('BENCH_SNAPSHOT_MEM_N', 3);
  const fillPct = envInt0('BENCH_SNAPSHOT_MEM_FILL_PCT', 25);
  const figures: Figure[] = [];
  const problems = c.problems;
  type Series = Map<string, number[]>;
  const S = new Map<string, Series>(MEM_SIZES.map((s) => [s.name, new Map()]));
  const rec = (vm: string, k: string, v: number) => {
    const m = S.get(vm)!;
    m.set(k, [...(m.get(k) ?? []), v]);
  };
  const get = (vm: string, k: string) => S.get(vm)!.get(k) ?? [];
  const rawDirs: string[] = [];
  const seenEvents = new Set<string>();
  /** The agent's "resumed … in N ms" event for this VMI not seen before: its memory load time. */
  const resumedEventMs = async (vm: string): Promise<number> => {
    for (let k = 0; k < 50; k++) {
      const evs = (await c.v.client.list(EVENTS, { namespace: NS })).items.filter(
        (e) => e.reason === 'Resumed' && (e.involvedObject as Obj | undefined)?.name === vm,
      );
      const fresh = evs.find((e) => !seenEvents.has(`${e.metadata?.name}/${String(e.count ?? '')}/${String(e.message)}`));
      if (fresh) {
        seenEvents.add(`${fresh.metadata?.name}/${String(fresh.count ?? '')}/${String(fresh.message)}`);
        return Number(/in (\d+) ms/.exec(String(fresh.message))?.[1] ?? NaN);
      }
      await sleep(100);
    }
    return NaN;
  };
  try {
    for (const s of MEM_SIZES) await createVm(c, s.name, '1Gi', s.request);
    // Warm-up (not counted): boot each VM once (kernel and initrd into the page cache), then stop.
    for (const s of MEM_SIZES) {
      const off = await fileSize(serialFile(c, s.name));
      await vmAction(c, s.name, 'start');
      const first = await nextCounter(serialFile(c, s.name), off, BOOT_TIMEOUT_MS);
      console.log(`  memory: ${s.name} warm-up boot, first counter ${first.counter}`);
      await stopVm(c, s.name);
    }

    const round = async (s: (typeof MEM_SIZES)[number], i: number) => {
      const vm = s.name;
      const file = serialFile(c, vm);
      const tag = `${vm}-${i}`;
      // Cold boot (baseline).
      await sleep(GAP_MS);
      let off = await fileSize(file);
      let t0 = now();
      await vmAction(c, vm, 'start');
      const running = await waitVmiRunning(c, vm);
      const boot = await nextCounter(file, off, BOOT_TIMEOUT_MS);
      const bootMs = boot.line - t0;
      rec(vm, 'boot', bootMs);
      rec(vm, 'boot running', running - t0);
      // Memory in use, then the snapshot with memory.
      const fillMs = await fillGuestMemory(runDirOf(c, vm), Math.floor((s.bytes * fillPct) / 100));
      const before = await lastCounter(file);
      await sleep(GAP_MS);
      const snap = await snapshot(c, vm, `mem-${tag}`, true);
      rec(vm, 'snapshot', snap.ms);
      const after = await lastCounter(file);
      const memBytes = snap.memoryFile
        ? await stat(snap.memoryFile).then(
            (x) => x.size,
            () => NaN,
          )
        : NaN;
      rec(vm, 'memory file', memBytes);
      if (!snap.memoryFile) problems.push(`memory ${vm}: snapshot mem-${tag} has no memory file`);
      await nextCounter(file, await fileSize(file), 30_000); // the guest runs on after the snapshot
      await stopVm(c, vm);
      await sleep(GAP_MS);
      const r = await restore(c, `mem-${tag}`, vm, `rmem-${tag}`, false);
      rec(vm, 'restore', r.ms);
      // Resume.
      await sleep(GAP_MS);
      off = await fileSize(file);
      t0 = now();
      const echo = echoProbe(runDirOf(c, vm), BOOT_TIMEOUT_MS);
      echo.catch(() => undefined);
      await vmAction(c, vm, 'start');
      const resRunning = await waitVmiRunning(c, vm);
      const res = await nextCounter(file, off, BOOT_TIMEOUT_MS);
      const echoAt = await echo;
      rec(vm, 'resume', res.line - t0);
      rec(vm, 'resume running', resRunning - t0);
      rec(vm, 'resume echo', echoAt - t0);
      const loadMs = await resumedEventMs(vm);
      rec(vm, 'resume load', loadMs);
      if (/Linux version|VESSEL-GUEST-READY/.test(res.text)) problems.push(`memory ${vm} round ${i}: the guest booted instead of resuming`);
      if (res.counter < before || res.counter > after + 2)
        problems.push(`memory ${vm} round ${i}: resumed at counter ${res.counter}, not where the snapshot was (${before}..${after})`);
      console.log(
        `  memory ${vm} round ${i}: cold boot ${ms(bootMs)} → first counter; fill ${ms(fillMs)}; snapshot with memory ${ms(snap.ms)} (${mib(memBytes)}); restore ${ms(r.ms)}; resume → counter ${res.counter} ${ms(res.line - t0)} (Running ${ms(resRunning - t0)}, console echo ${ms(echoAt - t0)}, agent's load ${ms(loadMs)}); counters ${before}..${after} at the snapshot`,
      );
      await nextCounter(file, await fileSize(file), 30_000);
      await stopVm(c, vm);
      await deleteObj(c, 'restore', `rmem-${tag}`);
      await deleteSnapshot(c, `mem-${tag}`);
    };
    for (let i = 0; i < n; i++) {
      const order = i % 2 === 0 ? MEM_SIZES : [...MEM_SIZES].reverse();
      for (const s of order) await round(s, i);
    }

    // Raw QEMU by hand, with the agent's argv (from vm.json) on a fresh linked clone of tiny.
    const golden = volumePath(await c.v.client.get(PVCS, 'tiny', { namespace: IMAGES }));
    if (!golden) throw new Error('claim vessel-images/tiny has no volume path');
    const rawRoot = join(c.dir, 'raw');
    await mkdir(rawRoot, { recursive: true });
    for (const s of MEM_SIZES) {
      const vm = s.name;
      const disk = volumePath(c.cache.get('pvc', `${vm}-root`)!)!;
      const meta = JSON.parse(await readFile(join(runDirOf(c, vm), 'vm.json'), 'utf8')) as { argv?: string[] };
      const agentArgv = [...(meta.argv ?? [])];
      const inc = agentArgv.indexOf('-incoming');
      if (inc >= 0) agentArgv.splice(inc, 2);
      const runDir = join(rawRoot, vm);
      rawDirs.push(runDir);
      const overlay = join(rawRoot, `${vm}.qcow2`);
      const memFile = join(rawRoot, `${vm}.memory`);
      await cloneVolume({ source: golden, dest: overlay, size: (await qemuImg.info(disk, { format: 'qcow2' })).virtualSize, linked: true });
      const argv = agentArgv.map((a) => a.split(disk).join(overlay));
      if (!argv.some((a) => a.includes(overlay))) throw new Error(`the disk ${disk} is not in the argv of ${vm}`);
      const chardevs = chardevsOf(argv);
      const serial = runDirFiles(runDir).serialLog;
      let off = await fileSize(serial);
      await launch({ runDir, argv, chardevs, vnc: true, noShutdown: true, vm: { namespace: 'bench', name: `raw-${vm}` } });
      await nextCounter(serial, off, BOOT_TIMEOUT_MS);
      await fillGuestMemory(runDir, Math.floor((s.bytes * fillPct) / 100));
      for (let i = 0; i < n; i++) {
        await sleep(GAP_MS);
        let qmp = await QmpClient.connect(runDirFiles(runDir).qmp, { timeoutMs: 10_000 });
        try {
          // First with QEMU's migration bandwidth limit (max-bandwidth, 128 MiB/s by default)
          // lifted, as `virsh save` and the agent do; then the guest runs on for an instant (QEMU
          // refuses a second migration of a guest paused by the first) and is saved with QEMU's
          // default limit. That second file is the one resumed from.
          const { 'max-bandwidth': defaultBandwidth } = await qmp.execute<{ 'max-bandwidth': number }>('query-migrate-parameters');
          const t2 = now();
          await qmp.execute('stop');
          await qmp.execute('migrate-set-parameters', { 'max-bandwidth': UNLIMITED_BANDWIDTH });
          await qmp.execute('migrate', { uri: `exec:cat > ${memFile}.fast` });
          await pollMigration(qmp, false, 600_000);
          rec(vm, 'raw save unthrottled', now() - t2);
          await rm(`${memFile}.fast`, { force: true });
          await qmp.execute('migrate-set-parameters', { 'max-bandwidth': defaultBandwidth });
          await qmp.execute('cont');
          await sleep(GAP_MS);
          const t0 = now();
          await qmp.execute('stop');
          await qmp.execute('migrate', { uri: `exec:cat > ${memFile}` });
          await pollMigration(qmp, false, 600_000);
          rec(vm, 'raw save', now() - t0);
          await fsyncFile(memFile);
          rec(vm, 'raw save+fsync', now() - t0);
        } finally {
          await qmp.close();
        }
        rec(vm, 'raw memory file', (await stat(memFile)).size);
        await terminate(runDir, { graceMs: 2000 });
        await sleep(GAP_MS);
        off = await fileSize(serial);
        const t1 = now();
        const echo = echoProbe(runDir, BOOT_TIMEOUT_MS);
        echo.catch(() => undefined);
        await launch({ runDir, argv: [...argv, '-incoming', 'defer'], chardevs, vnc: true, noShutdown: true, vm: { namespace: 'bench', name: `raw-${vm}` } });
        qmp = await QmpClient.connect(runDirFiles(runDir).qmp, { timeoutMs: 10_000 });
        try {
          await qmp.execute('migrate-incoming', { uri: `exec:cat ${memFile}` });
          await pollMigration(qmp, true, 600_000);
          rec(vm, 'raw load', now() - t1);
          if ((await qmp.execute<{ status: string }>('query-status')).status === 'paused') await qmp.execute('cont');
        } finally {
          await qmp.close();
        }
        const res = await nextCounter(serial, off, BOOT_TIMEOUT_MS);
        rec(vm, 'raw resume', res.line - t1);
        rec(vm, 'raw resume echo', (await echo) - t1);
        if (/Linux version|VESSEL-GUEST-READY/.test(res.text)) problems.push(`memory raw ${vm} round ${i}: the guest booted instead of resuming`);
        console.log(
          `  memory raw ${vm} round ${i}: stop + migrate to file ${ms(get(vm, 'raw save').at(-1)!)} (${mib(get(vm, 'raw memory file').at(-1)!)}, + fsync ${ms(get(vm, 'raw save+fsync').at(-1)!)}; unthrottled ${ms(get(vm, 'raw save unthrottled').at(-1)!)}); launch -incoming → counter ${res.counter} ${ms(res.line - t1)}, console echo ${ms(get(vm, 'raw resume echo').at(-1)!)}`,
        );
        await nextCounter(serial, await fileSize(serial), 30_000);
      }
      await terminate(runDir, { graceMs: 2000 });
      await rm(overlay, { force: true });
      await rm(memFile, { force: true });
    }

    for (const s of MEM_SIZES) {
      const vm = s.name;
      figures.push({
        name: `resume / cold boot, ${s.label} guest (p50)`,
        ratio: ratio(p50(get(vm, 'resume')), p50(get(vm, 'boot'))),
        detail:
          `start → next VESSEL-COUNTER line, n=${n}: resumed from the memory snapshot ${p50p95(get(vm, 'resume'))} (VMI Running ${ms(p50(get(vm, 'resume running')))}, agent's memory load ${ms(p50(get(vm, 'resume load')))}); ` +
          `cold boot from the disk ${p50p95(get(vm, 'boot'))} (VMI Running ${ms(p50(get(vm, 'boot running')))}). The guest prints a counter line once a second, so a resume shows up to ~1 s after it happens: ` +
          `the guest echoes a key on its console (it runs) ${p50p95(get(vm, 'resume echo'))} after the start, ${fmtRatio(ratio(p50(get(vm, 'resume echo')), p50(get(vm, 'boot'))))} of the cold boot`,
      });
      figures.push({
        name: `snapshot with memory / raw stop+migrate at QEMU's default limit, ${s.label} (p50)`,
        ratio: ratio(p50(get(vm, 'snapshot')), p50(get(vm, 'raw save'))),
        detail: `POST → Succeeded ${p50p95(get(vm, 'snapshot'))}, memory file ${mib(p50(get(vm, 'memory file')))} (${fillPct}% of the guest filled); raw QMP stop + migrate exec:cat > file ${p50p95(get(vm, 'raw save'))} (${mib(p50(get(vm, 'raw memory file')))}), + fsync ${ms(p50(get(vm, 'raw save+fsync')))}; restore in place ${p50p95(get(vm, 'restore'))}`,
      });
      figures.push({
        name: `snapshot with memory / raw migrate, max-bandwidth lifted, ${s.label} (p50)`,
        ratio: ratio(p50(get(vm, 'snapshot')), p50(get(vm, 'raw save unthrottled'))),
        detail: `the same raw migrate after migrate-set-parameters max-bandwidth=1 TiB/s (QEMU's default limit is 128 MiB/s; the agent lifts it the same way): ${p50p95(get(vm, 'raw save unthrottled'))}`,
      });
      figures.push({
        name: `resume, platform / raw QEMU -incoming, ${s.label} (p50)`,
        ratio: ratio(p50(get(vm, 'resume')), p50(get(vm, 'raw resume'))),
        detail:
          `platform start → next counter ${p50p95(get(vm, 'resume'))}; raw launch(-incoming defer) + migrate-incoming + cont → next counter ${p50p95(get(vm, 'raw resume'))} (launch + load ${ms(p50(get(vm, 'raw load')))}); ` +
          `→ console echo: platform ${p50p95(get(vm, 'resume echo'))}, raw ${p50p95(get(vm, 'raw resume echo'))} (${fmtRatio(ratio(p50(get(vm, 'resume echo')), p50(get(vm, 'raw resume echo'))))})`,
      });
    }
    const [a, b] = MEM_SIZES.map((s) => s.name);
    figures.push({
      name: 'snapshot with memory, 1 GiB / 256 MiB guest (p50)',
      ratio: ratio(p50(get(b, 'snapshot')), p50(get(a, 'snapshot'))),
      detail: `${ms(p50(get(b, 'snapshot')))} vs ${ms(p50(get(a, 'snapshot')))}; raw 1 GiB / 256 MiB ${fmtRatio(ratio(p50(get(b, 'raw save')), p50(get(a, 'raw save'))))}; the filled share (${fillPct}%) grows with the guest`,
    });
    figures.push({
      name: 'resume, 1 GiB / 256 MiB guest (p50)',
      ratio: ratio(p50(get(b, 'resume')), p50(get(a, 'resume'))),
      detail: `${ms(p50(get(b, 'resume')))} vs ${ms(p50(get(a, 'resume')))}; raw 1 GiB / 256 MiB ${fmtRatio(ratio(p50(get(b, 'raw resume')), p50(get(a, 'raw resume'))))}`,
    });
    console.log(`  ${loadLine()}`);
  } catch (e) {
    problems.push(`memory: ${errText(e)}`);
  } finally {
    for (const d of rawDirs) await terminate(d, { graceMs: 2000 }).catch(() => undefined);
  }
  return { bench: `snapshot memory: 256 MiB and 1 GiB guests, ${n} rounds`, figures, problems, seconds: (now() - started) / 1000 };
}

// ---------------------------------------------------------------- main

/** Deletes every VM, clone, restore and snapshot of the namespace; checks no snapshot file or QEMU is left. */
async function cleanUp(c: Ctx, problems: string[]): Promise<void> {
  try {
    for (const kind of ['clone', 'restore'] as const) for (const o of c.cache.list(kind)) await deleteObj(c, kind, o.metadata!.name!);
    const vms = c.cache.list('vm').map((o) => o.metadata!.name!);
    await Promise.all(vms.map((nm) => c.v.client.delete(VMS, nm, { namespace: NS }).catch(() => undefined)));
    await c.cache.until('all VMIs gone', () => (c.cache.list('vmi').length === 0 ? true : undefined), STOP_TIMEOUT_MS * 2);
    for (const o of c.cache.list('snap')) await deleteSnapshot(c, o.metadata!.name!);
    await c.cache.until('all claims of the namespace gone', () => (c.cache.list('pvc').length === 0 ? true : undefined), OP_TIMEOUT_MS);
    let files: string[] = [];
    for (let k = 0; k < 60; k++) {
      files = await snapshotFiles(c);
      if (files.length === 0) break;
      await sleep(500);
    }
    if (files.length) problems.push(`clean-up: snapshot files left in the pool after every VM and snapshot was deleted: ${files.join(', ')}`);
  } catch (e) {
    problems.push(`clean-up: ${errText(e)}`);
  }
  for (const left of await listRunDirs(join(c.v.dataDir, 'vms', NS))) {
    problems.push(`clean-up: QEMU pid ${left.pid} still ran in ${left.runDir} after its VMI was gone; stopped it`);
    await terminate(left.runDir, { graceMs: 2000 });
  }
}

export async function runSnapshotBench(): Promise<BenchResult[]> {
  const only = (process.env.BENCH_SNAPSHOT_ONLY ?? 'linked,full,memory').split(',').map((x) => x.trim());
  const dir = await mkdtemp(join(process.env.BENCH_SNAPSHOT_DIR ?? tmpdir(), 'vsnap-'));
  const results: BenchResult[] = [];
  let v: Vessel | undefined;
  let cache: Cache | undefined;
  const setupProblems: string[] = [];
  try {
    const t = now();
    v = await startVessel({ dataDir: join(dir, 'vessel'), agent: { nodeName: 'node-a' } });
    await ensureTinyImage(v.client, (l) => console.log(`  ${l}`));
    cache = new Cache(v);
    await cache.start();
    console.log(`  setup: Vessel started and tiny imported in ${ms(now() - t)}; ${loadLine()}`);
    const parts: [string, (c: Ctx) => Promise<BenchResult>][] = [
      ['linked', runLinked],
      ['full', runFull],
      ['memory', runMemory],
    ];
    for (const [name, f] of parts) {
      if (!only.includes(name)) continue;
      const r = await f({ v, cache, problems: [], dir });
      printResult(r);
      results.push(r);
    }
  } catch (e) {
    setupProblems.push(`setup: ${errText(e)}`);
  } finally {
    if (v && cache) await cleanUp({ v, cache, problems: setupProblems, dir }, setupProblems);
    cache?.close();
    await v?.close();
    await rm(dir, { recursive: true, force: true });
  }
  if (setupProblems.length) {
    const r: BenchResult = { bench: 'snapshot: setup and clean-up', figures: [], problems: setupProblems, seconds: 0 };
    printResult(r);
    results.push(r);
  }
  return results;
}

if (isMain(import.meta.url)) {
  const started = now();
  const results = await runSnapshotBench();
  console.log(
    `\n${results
      .map((r) => r.figures.map((f) => `  ${fmtRatio(f.ratio).padStart(8)}  ${f.name}`).join('\n'))
      .filter((x) => x)
      .join('\n')}`,
  );
  console.log(`\n  total ${((now() - started) / 1000).toFixed(0)} s; ${loadLine()}`);
  process.exit(results.some((r) => r.problems.length > 0) ? 1 : 0);
}
