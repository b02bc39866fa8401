/**
 * Where a migration's pause goes (docs/migration.md "TCG: the guest pauses..."): the times of
 * QEMU's own events on each side (STOP, MIGRATION setup/active/completed, RESUME; QEMU stamps
 * them with its realtime clock, the same clock as Date.now() on this host), kept per side and
 * logged once per migration as `timeline <side> name=<epoch ms> ...; <segments>`. The benchmark
 * parses the two sides' lines and joins them into one breakdown (`pauseSegments`); the raw
 * QEMU baseline is measured with the same class on its own QMP connections.
 */
import type { QmpEvent } from '../qmp/client.ts';

/** The marks a side records: QEMU events, plus the agent's own (`*-sent`: when a command left). */
export type Marks = Partial<Record<'stop' | 'setup' | 'active' | 'completed' | 'failed' | 'cancelled' | 'resume' | string, number>>;

interface EventSource {
  on(name: 'event', listener: (ev: QmpEvent) => void): unknown;
  off(name: 'event', listener: (ev: QmpEvent) => void): unknown;
}

/** An event's QEMU timestamp in epoch ms (µs kept as a fraction). */
export function eventMs(ev: Pick<QmpEvent, 'timestamp'>): number {
  return ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000;
}

/** The first time of each mark on one QMP connection, from attach() to detach(). */
export class MigrationTimeline {
  readonly marks: Marks = {};
  private readonly listener = (ev: QmpEvent): void => {
    const name = ev.event === 'STOP' ? 'stop' : ev.event === 'RESUME' ? 'resume' : ev.event === 'MIGRATION' ? String(ev.data.status) : undefined;
    if (name) this.mark(name, eventMs(ev));
  };
  private attached?: EventSource;

  attach(qmp: EventSource): this {
    this.attached = qmp;
    qmp.on('event', this.listener);
    return this;
  }

  /** Whether it is attached: it records, and its line is not yet logged. */
  get listening(): boolean {
    return this.attached !== undefined;
  }

  detach(): void {
    this.attached?.off('event', this.listener);
    this.attached = undefined;
  }

  /** Records `name` at `at` unless it has a time already (a second STOP is the switch-over's, not the pause's). */
  mark(name: string, at = Date.now()): void {
    if (this.marks[name] === undefined) this.marks[name] = at;
  }

  /** `timeline <side> stop=… setup=…; stop→setup 3 ms, …`: absolute marks for joining both sides, then this side's segments. */
  line(side: 'source' | 'target', extra = ''): string {
    const abs = Object.entries(this.marks)
      .sort((a, b) => a[1]! - b[1]!)
      .map(([k, v]) => `${k}=${v!.toFixed(1)}`);
    const seg = (side === 'source' ? SOURCE_SEGMENTS : TARGET_SEGMENTS).map(([a, b, what]) => span(this.marks, a, b, what)).filter((s): s is string => !!s);
    return `timeline ${side} ${abs.join(' ')}; ${seg.join(', ')}${extra ? `; ${extra}` : ''}`;
  }
}

const SOURCE_SEGMENTS: readonly (readonly [string, string, string])[] = [
  ['stop', 'setup', 'stop→setup'],
  ['setup', 'active', 'setup→active (connect, TLS handshake)'],
  ['active', 'postcopy-active', 'active→postcopy-active'],
  ['active', 'completed', 'active→completed (transfer)'],
];
const TARGET_SEGMENTS: readonly (readonly [string, string, string])[] = [
  ['active', 'completed', 'active→completed (receive, load)'],
  ['postcopy-active', 'resume', 'postcopy-active→resume'],
  ['completed', 'resume', 'completed→resume'],
];

/** `what N ms` when both marks are there in that order (in post-copy the target resumes before it completes). */
function span(m: Marks, a: string, b: string, what: string): string | undefined {
  const x = m[a];
  const y = m[b];
  return x === undefined || y === undefined || y < x ? undefined : `${what} ${Math.round(y - x)} ms`;
}

/**
 * Whether a target's half of the breakdown is complete: the guest arrived (MIGRATION completed)
 * and runs (RESUME), in either order. After a stop-and-copy RESUME follows `completed` (the
 * agent's `cont`); in post-copy QEMU 7.2's target starts the guest itself at the switch-over, so
 * RESUME comes first and `completed` when the last page has arrived.
 */
export function targetSettled(m: Marks): boolean {
  return m.completed !== undefined && m.resume !== undefined;
}

/** Parses a `timeline <side> k=v ...` log line back into its marks (the benchmark's side). */
export function parseTimeline(line: string): { side: 'source' | 'target'; marks: Marks } | undefined {
  const m = /timeline (source|target) ([^;]*)/.exec(line);
  if (!m) return undefined;
  const marks: Marks = {};
  for (const kv of m[2].trim().split(/\s+/)) {
    const [k, v] = kv.split('=');
    if (k && v !== undefined && Number.isFinite(Number(v))) marks[k] = Number(v);
  }
  return { side: m[1] as 'source' | 'target', marks };
}

/** The guest's pause, both sides joined (ms; NaN where a mark is missing). */
export interface PauseSegments {
  /** Source STOP → its MIGRATION setup: what runs between `stop` and `migrate` (QMP round trips). */
  stopToSetup: number;
  /** Source setup → active: connect, TLS handshake, RAM bitmap setup. */
  setupToActive: number;
  /** Source active → completed: the transfer itself. */
  transfer: number;
  /** Source completed → target completed: the target loading the last sections and devices. */
  srcToDstCompleted: number;
  /** Target completed → RESUME: until the guest runs again there. */
  completedToResume: number;
  /** Post-copy: source active → postcopy-active (what precopy ran before the switch; NaN in stop-and-copy). */
  toPostcopy: number;
  /** Post-copy: source postcopy-active → target RESUME (device state sent and loaded; NaN in stop-and-copy). */
  postcopyToResume: number;
  /** Source STOP → target RESUME: the guest's whole pause. */
  total: number;
}

export function pauseSegments(src: Marks, dst: Marks): PauseSegments {
  const d = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? NaN : b - a);
  return {
    stopToSetup: d(src.stop, src.setup),
    setupToActive: d(src.setup, src.active),
    transfer: d(src.active, src.completed),
    srcToDstCompleted: d(src.completed, dst.completed),
    completedToResume: d(dst.completed, dst.resume),
    toPostcopy: d(src.active, src['postcopy-active']),
    postcopyToResume: d(src['postcopy-active'], dst.resume),
    total: d(src.stop, dst.resume),
  };
}
