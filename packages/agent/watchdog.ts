/**
 * The watchdog: who fences the fencer. Self-fencing (fencing.ts) runs inside the agent, so an
 * agent that dies or hangs while its QEMUs run fences nothing, and the control plane would
 * start those VMs a second time once the node is past its failover deadline. Like the hardware
 * watchdog self-node-remediation arms, a small process the agent starts (detached, so it
 * outlives the agent) kills the node's QEMUs when the agent has not petted it for its timeout.
 *
 * The agent pets after every fencing check by rewriting `pet` in the watchdog directory: its
 * mtime is the pet, its content the terms ({timeoutMs, armed}). The timeout ends before the
 * control plane's failover: the node-lifecycle controller publishes on the Node after how many
 * seconds of silence it fails the node over (storage.NODE_FAILOVER_AFTER), and the agent takes
 * off one heartbeat interval (the control plane counts from the last heartbeat it saw, which may
 * be that much older than the last pet) and a margin for the kill itself. `armed` is false while
 * the node has no peers: the control plane never fails such a node over, so nothing is killed.
 *
 * An agent restart within the timeout keeps every VM (the new agent pets at once and reuses the
 * running watchdog). The watchdog exits after it fires, when its time passes unarmed or with no
 * QEMU left, and when `pet` is removed (disarm()). Wall-clock mtimes: a clock jump on the host
 * can fire it early or late, as for any file-based lease.
 */
import { spawn } from 'node:child_process';
import { appendFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { terminateAll } from './qemu/process.ts';

/** What the kill itself and the watchdog's polling may take, kept off the timeout. */
const KILL_MARGIN_MS = 3000;
/** How often the watchdog looks at the pet. */
const POLL_MS = 500;

export interface WatchdogTerms {
  timeoutMs: number;
  /** Whether a silent agent gets its QEMUs killed (false: the node has no peers, no failover). */
  armed: boolean;
}

/**
 * The watchdog's timeout: ends before the control plane's failover (failoverAfterMs, when it has
 * published one), else fencing timeout + 4 s, which ends before it with the default grace (8 s).
 */
export function watchdogTimeoutMs(o: { failoverAfterMs?: number; heartbeatMs: number; fencingMs: number }): number {
  if (o.failoverAfterMs !== undefined && o.failoverAfterMs > 0) return Math.max(o.failoverAfterMs - o.heartbeatMs - KILL_MARGIN_MS, 1000);
  return o.fencingMs + 4000;
}

/** The agent's side: starts the watchdog process (or finds the one running) and pets it. */
export class Watchdog {
  readonly dir: string;
  private terms?: WatchdogTerms;

  constructor(
    dataDir: string,
    private readonly vmsRoot: string,
    private readonly log?: (line: string) => void,
  ) {
    this.dir = join(resolve(dataDir), 'watchdog');
  }

  /**
   * Pets with the terms a previous agent left (so a restart does not disarm, or arm, anything
   * before its first fencing check), then makes sure a watchdog process runs.
   */
  async start(initial: WatchdogTerms): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    this.terms = (await readTerms(join(this.dir, 'pet'))) ?? initial;
    await this.pet();
    if (await this.running()) return;
    const main = fileURLToPath(new URL('./watchdog-main.ts', import.meta.url));
    const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), main, this.dir, this.vmsRoot], { detached: true, stdio: 'ignore' });
    child.unref();
    await writeFile(join(this.dir, 'pid'), `${child.pid}\n`);
    this.log?.(
      `watchdog: started (pid ${child.pid}): the node's QEMUs die ${this.terms.timeoutMs / 1000}s after the agent stops checking in${this.terms.armed ? '' : ' (unarmed while the node has no peers)'}`,
    );
  }

  /** Refreshes the pet, with new terms if given. */
  async pet(terms?: WatchdogTerms): Promise<void> {
    if (terms) this.terms = terms;
    if (!this.terms) return;
    const tmp = join(this.dir, `pet.${process.pid}`);
    await writeFile(tmp, JSON.stringify(this.terms));
    await rename(tmp, join(this.dir, 'pet'));
  }

  /** Stops the watchdog without firing (its process exits at its next look). */
  async disarm(): Promise<void> {
    await rm(join(this.dir, 'pet'), { force: true });
  }

  /** Whether the process named in `pid` is a watchdog of this directory. */
  async running(): Promise<boolean> {
    const pid = Number((await readFile(join(this.dir, 'pid'), 'utf8').catch(() => '')).trim());
    if (!(pid > 0)) return false;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    const args = cmdline.split('\0');
    return args.some((a) => a.endsWith('watchdog-main.ts')) && args.includes(this.dir);
  }
}

async function readTerms(file: string): Promise<WatchdogTerms | undefined> {
  try {
    const t = JSON.parse(await readFile(file, 'utf8')) as Partial<WatchdogTerms>;
    return typeof t.timeoutMs === 'number' && typeof t.armed === 'boolean' ? { timeoutMs: t.timeoutMs, armed: t.armed } : undefined;
  } catch {
    return undefined;
  }
}

/** The watchdog process's loop (watchdog-main.ts); resolves with why it ended. */
export async function runWatchdog(dir: string, vmsRoot: string): Promise<'disarmed' | 'fired' | 'expired'> {
  const pet = join(dir, 'pet');
  const note = (line: string) => appendFile(join(dir, 'watchdog.log'), `${new Date().toISOString()} ${line}\n`).catch(() => undefined);
  let terms: WatchdogTerms | undefined;
  for (;;) {
    const st = await stat(pet).catch(() => undefined);
    // Gone: disarmed, or the whole directory removed (nothing is written into it then).
    if (!st) return 'disarmed';
    terms = (await readTerms(pet)) ?? terms;
    const silentMs = Date.now() - st.mtimeMs;
    if (terms && silentMs > terms.timeoutMs) {
      if (!terms.armed) {
        await note(`the agent is silent for ${Math.round(silentMs / 1000)}s; unarmed (no peers): nothing killed`);
        return 'expired';
      }
      const n = await terminateAll(vmsRoot, { graceMs: 500 });
      await note(`the agent is silent for ${Math.round(silentMs / 1000)}s (timeout ${terms.timeoutMs / 1000}s): killed ${n} QEMU${n === 1 ? '' : 's'}`);
      return n > 0 ? 'fired' : 'expired';
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
