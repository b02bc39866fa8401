/**
 * Quiescing a guest around a short piece of work (a snapshot's disk switch), as KubeVirt does:
 * guest-fsfreeze-freeze (the agent flushes every dirty page and freezes the guest's disk
 * filesystems, so what is on disk is consistent and no write lands until the thaw), the work,
 * then guest-fsfreeze-thaw whatever the work did. A work that overruns the deadline does not
 * keep the guest frozen: it is thawed then (the outcome says the work was not quiesced). A thaw
 * that fails is retried in the background until it succeeds or the retry time is up.
 */
import { QgaClient, withAgent, type QgaConnectOptions } from './client.ts';

export interface FreezeOutcome {
  /** The guest's filesystems stayed frozen for the whole work. */
  quiesced: boolean;
  /** How many filesystems the agent froze. */
  filesystems: number;
  /** How long they were frozen (ms). */
  frozenMs: number;
  /** Why the work was not (or not wholly) quiesced, or that the thaw is still being retried. */
  problem?: string;
}

export interface FreezeOptions {
  /** Thaw after this long even if the work is still running (default 60 s). */
  deadlineMs?: number;
  /** Limit for the freeze itself (default the client's, 60 s). */
  freezeTimeoutMs?: number;
  /** Limit for reaching the agent and syncing (default 5 s). */
  connectTimeoutMs?: number;
  /** How long a failed thaw is retried in the background (default 5 min). */
  thawRetryMs?: number;
  log?: (message: string) => void;
}

export const FREEZE_DEADLINE_MS = 60_000;

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

/**
 * Runs `work` with the guest behind `socketPath` frozen. When the agent cannot be reached or the
 * freeze fails, `work` still runs (crash-consistent) and the outcome says why. Rejects only with
 * `work`'s own error, after the thaw.
 */
export async function withFrozenGuest<T>(socketPath: string, work: () => Promise<T>, opts: FreezeOptions = {}): Promise<{ value: T; freeze: FreezeOutcome }> {
  const deadlineMs = opts.deadlineMs ?? FREEZE_DEADLINE_MS;
  const log = opts.log ?? (() => undefined);
  const freeze: FreezeOutcome = { quiesced: false, filesystems: 0, frozenMs: 0 };
  let result: { value: T } | undefined;
  let started = false;
  const run = async () => {
    started = true;
    result = { value: await work() };
  };
  const connect: QgaConnectOptions = { timeoutMs: opts.connectTimeoutMs ?? 5000 };
  try {
    await withAgent(
      socketPath,
      async (client) => {
        let frozenAt: number | undefined;
        try {
          freeze.filesystems = await client.fsfreezeFreeze(opts.freezeTimeoutMs);
          frozenAt = Date.now();
        } catch (e) {
          freeze.problem = `freezing the guest's filesystems failed: ${message(e)}`;
          // A freeze that timed out may still happen, or may have frozen some filesystems.
          await thaw(client, socketPath, opts, log);
        }
        if (frozenAt === undefined) return run();
        let early = false;
        const timer = setTimeout(() => {
          early = true;
          log(`guest agent ${socketPath}: still frozen after ${deadlineMs} ms: thawing before the work ends`);
          void thaw(client, socketPath, opts, log);
        }, deadlineMs);
        try {
          await run();
        } finally {
          clearTimeout(timer);
          // Also after the deadline's thaw (a second thaw is harmless): that one may have failed.
          const thawed = await thaw(client, socketPath, opts, log);
          freeze.frozenMs = Date.now() - frozenAt;
          freeze.quiesced = !early;
          if (early) freeze.problem = `the guest was thawed at the ${deadlineMs} ms deadline before the work finished`;
          else if (!thawed) freeze.problem = 'thawing the guest failed: retrying in the background';
        }
      },
      connect,
    );
  } catch (e) {
    if (started) throw e; // the work's own error, after the thaw
    freeze.problem = `the guest agent could not be reached: ${message(e)}`;
  }
  if (!started) await run();
  return { value: result!.value, freeze };
}

/** Thaws through `client`; when that fails, keeps trying over fresh connections in the background. */
async function thaw(client: QgaClient, socketPath: string, opts: FreezeOptions, log: (m: string) => void): Promise<boolean> {
  try {
    await client.fsfreezeThaw();
    return true;
  } catch (e) {
    log(`guest agent ${socketPath}: thaw failed (${message(e)}): retrying in the background`);
    void thawLater(socketPath, Date.now() + (opts.thawRetryMs ?? 5 * 60_000), log);
    return false;
  }
}

async function thawLater(socketPath: string, until: number, log: (m: string) => void): Promise<void> {
  for (let wait = 1000; Date.now() < until; wait = Math.min(wait * 2, 30_000)) {
    await new Promise((resolve) => setTimeout(resolve, wait));
    try {
      await withAgent(socketPath, (c) => c.fsfreezeThaw());
      log(`guest agent ${socketPath}: thawed on a later try`);
      return;
    } catch (e) {
      if (e instanceof Error && 'code' in e && e.code === 'ConnectFailed') return; // QEMU is gone: nothing left frozen
    }
  }
  log(`guest agent ${socketPath}: could not thaw the guest; its filesystems may still be frozen (guest-fsfreeze-thaw by hand)`);
}
