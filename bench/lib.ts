/**
 * Shared helpers for the benchmarks: environment knobs, percentiles, a bounded worker pool
 * (bounded in count and in time), formatting, and the result shape bench/run.ts summarises.
 */
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';

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

export interface Stats { n: number; p50: number; p99: number; max: number; mean: number }

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
  let next = 0, failed = 0, timedOut = false;
  let firstError: unknown;
  const started = now();
  const worker = async () => {
    while (next < count) {
      if (now() - started > deadlineMs) { timedOut = true; return; }
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
    return await Promise.race([p, new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no result within ${timeoutMs} ms`)), timeoutMs); })]);
  } finally {
    clearTimeout(timer);
  }
}
