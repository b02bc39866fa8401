/**
 * Shared helpers for the benchmarks: environment knobs, percentiles, a bounded worker pool
 * (bounded in count and in time), formatting, and the result shape bench/run.ts summarises.
 */
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { isNotFound, type Client, type KubeObject, type ResourceRef } from '@vessel/client';
import { eventually as pollUntil } from '../e2e/harness.ts';
import type { ChardevRequest } from '../packages/agent/qemu/process.ts';

/** One line of a benchmark's summary: a ratio against a baseline measured in the same run. */
export interface Figure {
  name: string;
  /** measured / baseline (higher = slower than the baseline, unless noted). */
  ratio: number;
  /** The raw numbers behind the ratio, already formatted. */
  detail: string;
}

export interface BenchResult {
  bench: string;
  figures: Figure[];
  /** Failed checks (item counts, missed events, timeouts). Empty means all checks passed. */
  problems: string[];
  seconds: number;
}

/** A positive integer from the environment, or the default. */
export function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, not "${raw}"`);
  return n;
}

export const now = (): number => performance.now();

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Nearest-rank percentile of an ascending array (p in 0..100). NaN when empty. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

export interface Stats {
  n: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

export function stats(samples: number[]): Stats {
  const s = Float64Array.from(samples).sort();
  const arr = Array.from(s);
  const mean = arr.length ? arr.reduce((a, b) => a + b, 0) / arr.length : NaN;
  return { n: arr.length, p50: percentile(arr, 50), p99: percentile(arr, 99), max: arr.length ? arr[arr.length - 1] : NaN, mean };
}

/** Milliseconds with a precision that suits the magnitude. */
export function ms(v: number): string {
  if (!Number.isFinite(v)) return 'n/a';
  if (v < 1) return `${v.toFixed(3)} ms`;
  if (v < 100) return `${v.toFixed(2)} ms`;
  return `${v.toFixed(0)} ms`;
}

export function ratio(measured: number, baseline: number): number {
  return baseline > 0 ? measured / baseline : NaN;
}

export function fmtRatio(r: number): string {
  return Number.isFinite(r) ? `${r.toFixed(r < 10 ? 2 : 1)}x` : 'n/a';
}

export interface PoolResult {
  /** Latency (ms) of each task that completed, in completion order. */
  latencies: number[];
  completed: number;
  failed: number;
  firstError?: unknown;
  /** Wall time of the whole pool (ms). */
  wallMs: number;
  timedOut: boolean;
}

/**
 * Runs task(0..count-1) with at most `concurrency` in flight, timing each one. Stops
 * starting new tasks once `deadlineMs` has passed (tasks in flight are awaited).
 */
export async function runPool(count: number, concurrency: number, deadlineMs: number, task: (i: number) => Promise<unknown>): Promise<PoolResult> {
  const latencies: number[] = [];
  let next = 0,
    failed = 0,
    timedOut = false;
  let firstError: unknown;
  const started = now();
  const worker = async () => {
    while (next < count) {
      if (now() - started > deadlineMs) {
        timedOut = true;
        return;
      }
      const i = next++;
      const t0 = now();
      try {
        await task(i);
        latencies.push(now() - t0);
      } catch (e) {
        failed++;
        firstError ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return { latencies, completed: latencies.length, failed, firstError, wallMs: now() - started, timedOut };
}

/** Records a problem if a pool did not finish cleanly. */
export function checkPool(label: string, r: PoolResult, expected: number, problems: string[]): void {
  if (r.failed) problems.push(`${label}: ${r.failed} of ${expected} failed (first: ${errText(r.firstError)})`);
  if (r.timedOut) problems.push(`${label}: hit its time bound after ${r.completed} of ${expected}`);
}

export function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Prints a result block (used standalone and by run.ts). */
export function printResult(r: BenchResult): void {
  console.log(`\n=== ${r.bench} (${r.seconds.toFixed(1)} s)`);
  const width = Math.max(...r.figures.map((f) => f.name.length), 10);
  for (const f of r.figures) console.log(`  ${f.name.padEnd(width)}  ${fmtRatio(f.ratio).padStart(8)}   ${f.detail}`);
  if (r.problems.length === 0) console.log('  checks: all passed');
  for (const p of r.problems) console.log(`  PROBLEM: ${p}`);
}

/** True when `moduleUrl` is the script node was started with (run standalone, not imported). */
export function isMain(moduleUrl: string): boolean {
  return process.argv[1] !== undefined && moduleUrl === pathToFileURL(process.argv[1]).href;
}

/** Races `p` against a timer; rejects with `what` when the timer wins. */
export async function within<T>(p: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no result within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Median of the samples (mean of the middle two for an even count). NaN when empty. */
export function median(samples: number[]): number {
  if (samples.length === 0) return NaN;
  const s = [...samples].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** The tests' poller: every `everyMs` until `check` returns a value, or fails with `what`. */
export { pollUntil };

export const DATAVOLUMES: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
export const DATASOURCES: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datasources', namespaced: true };
export const PVCS: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };

/** A DataVolume's status.phase ('' when it has none yet). */
export function dvPhase(dv: KubeObject): string {
  return String((dv.status as { phase?: unknown } | undefined)?.phase ?? '');
}

/** The vessel.io/volume-path annotation of a claim (where the agent put its qcow2), if any. */
export function volumePath(pvc: KubeObject): string | undefined {
  return (pvc.metadata?.annotations as Record<string, string> | undefined)?.['vessel.io/volume-path'];
}

/**
 * The user-visible path of a DataVolume: POSTs `dv` and waits for phase Succeeded, as
 * `kubectl wait` would. A watch on the namespace's DataVolumes is opened first, from the
 * resourceVersion of a list, so no event between the POST and the watch connecting is missed;
 * `ms` runs from just before the POST to the moment the Succeeded event is parsed. If the
 * watch stream ends early, GET polls (every 50 ms) take over. `phases` says when each phase
 * was first seen (ms after the POST), which shows where the time went. Rejects on phase
 * Failed (with the Ready condition's reason and message) or after timeoutMs.
 */
export async function createDataVolumeAndWait(
  client: Client,
  namespace: string,
  dv: KubeObject,
  timeoutMs: number,
): Promise<{ ms: number; dv: KubeObject; phases: { phase: string; ms: number }[] }> {
  const name = dv.metadata?.name;
  if (!name) throw new Error('createDataVolumeAndWait: the DataVolume needs metadata.name');
  const rv = (await client.list(DATAVOLUMES, { namespace, limit: 1 })).metadata?.resourceVersion;
  let settle: { resolve: (o: KubeObject) => void; reject: (e: Error) => void } | undefined;
  const outcome = new Promise<KubeObject>((resolve, reject) => {
    settle = { resolve, reject };
  });
  outcome.catch(() => undefined); // observed below; never an unhandled rejection
  let finished = false;
  let t0 = now();
  const phases: { phase: string; ms: number }[] = [];
  const seen = (o: KubeObject) => {
    if (finished || o.metadata?.name !== name) return;
    const phase = dvPhase(o);
    if (phase && !phases.some((x) => x.phase === phase)) phases.push({ phase, ms: now() - t0 });
    if (phase === 'Succeeded') {
      finished = true;
      settle!.resolve(o);
    }
    if (phase === 'Failed') {
      finished = true;
      const ready = ((o.status as { conditions?: { type: string; reason?: string; message?: string }[] } | undefined)?.conditions ?? []).find(
        (c) => c.type === 'Ready',
      );
      settle!.reject(new Error(`DataVolume ${namespace}/${name} Failed: ${ready?.reason ?? '?'}: ${ready?.message ?? ''}`));
    }
  };
  const watch = client.watchResource(DATAVOLUMES, { namespace, resourceVersion: rv }, (ev) => {
    if (ev.type === 'ADDED' || ev.type === 'MODIFIED') seen(ev.object);
  });
  const poll = async () => {
    while (!finished) {
      await sleep(50);
      const o = await client.get(DATAVOLUMES, name, { namespace }).catch(() => undefined);
      if (o) seen(o);
    }
  };
  watch.done
    .then(
      () => (finished ? undefined : poll()),
      () => (finished ? undefined : poll()),
    )
    .catch(() => undefined);
  try {
    t0 = now();
    await client.create(DATAVOLUMES, dv, { namespace });
    const done = await within(outcome, timeoutMs, `DataVolume ${namespace}/${name} to be Succeeded`);
    return { ms: phases.find((x) => x.phase === 'Succeeded')?.ms ?? now() - t0, dv: done, phases };
  } finally {
    finished = true;
    watch.close();
  }
}

/** Deletes a DataVolume and waits until its claim (of the same name) is gone, so its volume file is removed too. */
export async function deleteDataVolume(client: Client, namespace: string, name: string, timeoutMs: number): Promise<void> {
  await client.delete(DATAVOLUMES, name, { namespace });
  const gone = (p: Promise<unknown>) =>
    p.then(
      () => false,
      (e: unknown) => {
        if (isNotFound(e)) return true;
        throw e;
      },
    );
  await pollUntil(
    `DataVolume ${namespace}/${name} and its claim to be deleted`,
    async () => ((await gone(client.get(DATAVOLUMES, name, { namespace }))) && (await gone(client.get(PVCS, name, { namespace }))) ? true : undefined),
    timeoutMs,
    100,
  );
}

/** "load average 1.23 0.98 0.50 on 2 cores": printed by long benchmarks, since other work on the machine moves their figures. */
export function loadLine(): string {
  return `load average ${loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')} on ${cpus().length} cores`;
}

/** The chardevs buildQemuArgv asked launch() for, read back from the argv's devices. */
export function chardevsOf(argv: string[]): ChardevRequest[] {
  const out: ChardevRequest[] = [];
  for (let i = 0; i < argv.length - 1; i++) {
    if (argv[i] !== '-device') continue;
    const dev = argv[i + 1];
    const id = /(?:^|,)chardev=([^,]+)/.exec(dev)?.[1];
    if (!id) continue;
    if (dev.startsWith('isa-serial,')) out.push({ id, role: 'serial-console' });
    else if (dev.startsWith('virtserialport,')) out.push({ id, role: 'guest-agent' });
  }
  return out;
}
