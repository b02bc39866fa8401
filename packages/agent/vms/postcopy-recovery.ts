/**
 * Post-copy recovery (docs/migration.md "Post-copy recovery"): when the migration stream breaks
 * after the switch-over into post-copy, QEMU 7.2 waits in `postcopy-paused` on both sides (the
 * guest runs on the target, its vCPUs blocked on the pages it lacks; the source's memory is
 * stale and never resumed). Instead of giving the guest up at once, the agents try QEMU's
 * recovery for a bounded time: the source asks for a new listening address (attempt n), the
 * target pauses its side if it has not noticed the break (`migrate-pause`: a cut link delivers
 * no EOF), issues `migrate-recover` on a new port (the same tls-creds stay on both QEMUs) and
 * publishes it, and the source issues `migrate {uri, resume: true}`. QEMU then resends what the
 * target lacks and the migration completes as usual. The two agents meet in one VMI annotation
 * (RECOVERY_ANNOTATION: the migration's uid, the attempt, the target's address once it listens);
 * the decisions here are pure, migration.ts runs them.
 */

/** The VMI annotation the source writes (a request: uid, attempt) and the target completes (its new address). */
export const RECOVERY_ANNOTATION = 'vessel.io/migration-recovery';

/** One recovery attempt of migration `migrationUid` as the annotation holds it. */
export interface RecoveryNote {
  migrationUid: string;
  attempt: number;
  /** host:port the target's QEMU listens on (`migrate-recover`) for this attempt; absent: not yet. */
  address?: string;
}

/** The note in `annotations` when it is about migration `uid` and well-formed (a hand-written value counts as none). */
export function recoveryNote(annotations: Readonly<Record<string, string>> | undefined, uid: string): RecoveryNote | undefined {
  const raw = annotations?.[RECOVERY_ANNOTATION];
  if (!raw) return undefined;
  try {
    const v = JSON.parse(raw) as Partial<RecoveryNote>;
    if (v.migrationUid !== uid || !Number.isInteger(v.attempt) || (v.attempt ?? 0) < 1) return undefined;
    if (v.address !== undefined && (typeof v.address !== 'string' || !/^[^\s:]+:\d+$/.test(v.address))) return undefined;
    return { migrationUid: uid, attempt: v.attempt!, ...(v.address ? { address: v.address } : {}) };
  } catch {
    return undefined;
  }
}

/** Removes the note from `meta` (the migration ended: switched or failed); a note of any migration goes, as only one runs per VMI. */
export function dropRecoveryNote(meta: { annotations?: Record<string, string> }): void {
  if (meta.annotations) delete meta.annotations[RECOVERY_ANNOTATION];
}

/**
 * How long a broken post-copy is given to recover before the guest counts as lost (from the
 * moment the source saw `postcopy-paused`). 0 turns recovery off (today's lost path at once).
 * `VESSEL_TEST_POSTCOPY_RECOVERY_MS` sets it for tests.
 */
export function recoveryBoundMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.VESSEL_TEST_POSTCOPY_RECOVERY_MS);
  return env.VESSEL_TEST_POSTCOPY_RECOVERY_MS !== undefined && Number.isFinite(v) && v >= 0 ? v : 60_000;
}

/**
 * How much longer than the source's bound a target waits in `postcopy-paused` before it declares
 * the guest lost itself: the source decides first; this covers a source agent that is down or cut
 * off from the API server (it cannot say anything then).
 */
export const TARGET_GRACE_MS = 30_000;

/**
 * The source's run-directory file naming the last recovery attempt it issued `migrate resume` for
 * (`<migrationUid> <attempt>`), written just before: an agent restarted during a recovery knows
 * whether a connect may be under way.
 */
export const RESUMED_FILE = 'migration-resumed';

/** The attempt RESUMED_FILE's `text` names for migration `uid`. */
export function resumedAttempt(text: string, uid: string): number | undefined {
  const [u, a] = text.trim().split(' ');
  const n = Number(a);
  return u === uid && Number.isInteger(n) && n > 0 ? n : undefined;
}

export type SourceRecoveryAction =
  | { action: 'none' }
  /** Ask the target for a new listening address (write the note: uid, attempt). */
  | { action: 'request'; attempt: number }
  /** QMP `migrate {uri: tcp:<address>, resume: true}`. */
  | { action: 'resume'; attempt: number; address: string }
  /** Back in `postcopy-active` after `ms` broken. */
  | { action: 'recovered'; ms: number }
  /** Not recovered within the bound: the lost path. */
  | { action: 'give-up'; waitedMs: number };

/**
 * The source's side of a recovery, one `query-migrate` status at a time. At most one `migrate
 * resume` is outstanding: QEMU 7.2 connects asynchronously and a second connect while the first
 * hangs (a cut link: SYNs retransmitted for two minutes) could race it over the one outgoing
 * file; a new attempt is asked for only once the last resume's connect got through (QEMU went
 * `postcopy-recover` or `postcopy-active`) and the stream broke again.
 */
export class SourceRecovery {
  /** When the stream was seen broken (undefined while post-copy runs). */
  private since?: number;
  private requested = 0;
  private resumed = 0;
  /** The last resume's connect finished (or none was issued). */
  private connected = true;

  /**
   * `before`: what an agent before this one left (a restart during a recovery): the note of this
   * migration and the last attempt it issued `migrate resume` for (RESUMED_FILE). A resume issued
   * for the note's attempt may still be connecting: waited for (no second connect); a published
   * address not yet resumed is resumed; a request not yet answered is waited for.
   */
  constructor(
    private readonly boundMs: number,
    before?: { note?: RecoveryNote; resumed?: number },
  ) {
    const n = before?.note?.attempt;
    if (n === undefined) return;
    this.requested = n;
    this.resumed = before?.resumed === n ? n : n - 1;
    this.connected = this.resumed < n;
  }

  get recovering(): boolean {
    return this.since !== undefined;
  }

  /** QEMU refused the last `migrate resume` (nothing is connecting): a new attempt may be asked for. */
  resumeFailed(): void {
    this.connected = true;
  }

  /** A `migrate resume` was issued and has not connected yet (its connect may hang on a cut link). */
  get awaitingConnect(): boolean {
    return !this.connected;
  }

  /**
   * The last `migrate resume` is not connecting (no socket of QEMU's to the address: the agent
   * before this one died before QEMU took the command, or the connect gave up): the same attempt
   * is resumed again, to the address the target still listens on (its QEMU takes one
   * `migrate-recover` per break, so a new attempt could not be served).
   */
  resumeAgain(): void {
    if (this.connected) return;
    this.connected = true;
    this.resumed = this.requested - 1;
  }

  step(status: string, now: number, note: RecoveryNote | undefined): SourceRecoveryAction {
    if (status === 'postcopy-active') {
      const was = this.since;
      this.since = undefined;
      this.connected = true;
      return was === undefined ? { action: 'none' } : { action: 'recovered', ms: now - was };
    }
    if (status !== 'postcopy-paused' && status !== 'postcopy-recover') return { action: 'none' };
    this.since ??= now;
    const waitedMs = now - this.since;
    if (status === 'postcopy-recover') {
      // Connected and exchanging what the target lacks: given the bound once more (a link that
      // broke again during the handshake leaves QEMU here).
      this.connected = true;
      return waitedMs >= 2 * this.boundMs ? { action: 'give-up', waitedMs } : { action: 'none' };
    }
    if (waitedMs >= this.boundMs) return { action: 'give-up', waitedMs };
    if (this.resumed === this.requested && this.connected) {
      this.requested++;
      return { action: 'request', attempt: this.requested };
    }
    if (note?.address && note.attempt === this.requested && this.resumed < this.requested) {
      this.resumed = this.requested;
      this.connected = false;
      return { action: 'resume', attempt: this.resumed, address: note.address };
    }
    return { action: 'none' };
  }
}

export type TargetRecoveryAction = 'none' | 'pause' | 'listen' | 'lost';

/**
 * The target's side, one `query-migrate` status at a time. `note`: the recovery note of its
 * migration; `served`: the last attempt it listened for; `pausedSince`: since when its QEMU is
 * in `postcopy-paused` (undefined when not). A requested attempt is served by pausing a QEMU
 * still in `postcopy-active` (it has not seen the break: a cut link delivers nothing), then
 * `migrate-recover` once it is paused. Without recovery (`giveUpMs` 0: turned off, or a QEMU
 * behind the masquerade relay) a paused QEMU is lost at once, as before recovery existed.
 */
export function targetRecoveryAction(
  status: string | undefined,
  note: RecoveryNote | undefined,
  served: number,
  pausedSince: number | undefined,
  now: number,
  giveUpMs: number,
): TargetRecoveryAction {
  if (status === 'postcopy-paused' && (giveUpMs <= 0 || (pausedSince !== undefined && now - pausedSince >= giveUpMs))) return 'lost';
  if (giveUpMs <= 0 || !note || note.address || note.attempt <= served) return 'none';
  if (status === 'postcopy-active') return 'pause';
  if (status === 'postcopy-paused') return 'listen';
  return 'none';
}

/**
 * How long after its `migrate resume` the source looks for QEMU's socket to the target: QEMU 7.2
 * connects in a thread of its own, so the socket appears a moment after the command returned.
 */
export const RESUME_CONNECT_GRACE_MS = 3000;

/** TCP states in /proc/net/tcp{,6}: a connect under way or done. */
const SYN_SENT = '02';
const ESTABLISHED = '01';

/**
 * How many connections to `address` (`ipv4:port`) the `/proc/<pid>/net/tcp` or `tcp6` text
 * `table` (the socket table of the network namespace QEMU runs in) holds that are connecting
 * (SYN_SENT) or connected: more than none is a `migrate resume` under way. IPv4 addresses appear
 * in tcp6 as v4-mapped. A malformed address matches nothing.
 */
export function connectionsTo(table: string, address: string): number {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+):(\d+)$/.exec(address);
  if (!m) return 0;
  const hex = (n: number, width: number) => n.toString(16).toUpperCase().padStart(width, '0');
  // The kernel prints the address as the 32-bit word in host (little-endian) order.
  const ip = [m[4], m[3], m[2], m[1]].map((o) => hex(Number(o), 2)).join('');
  const port = hex(Number(m[5]), 4);
  const wanted = new Set([`${ip}:${port}`, `0000000000000000FFFF0000${ip}:${port}`]);
  let n = 0;
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > 3 && wanted.has(f[2]) && (f[3] === SYN_SENT || f[3] === ESTABLISHED)) n++;
  }
  return n;
}
