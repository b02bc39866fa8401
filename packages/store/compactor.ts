/**
 * Periodic compaction, the way kube-apiserver does it: every interval, compact at the
 * revision that was current one interval earlier. History therefore always covers at least
 * the last interval, so watchers that reconnect and paged lists that continue within it
 * never see 'Gone'. Several API servers may each run one on a shared etcd: compacting at or
 * below the compacted revision is a no-op.
 */
import type { Store } from './types.ts';

export interface CompactorOptions {
  /** Default 5 minutes (kube-apiserver's default). */
  intervalMs?: number;
  /** Failed rounds are retried next interval; this only reports them. */
  onError?: (err: Error) => void;
}

export interface Compactor {
  stop(): void;
}

export function startCompactor(store: Store, options: CompactorOptions = {}): Compactor {
  const intervalMs = options.intervalMs ?? 5 * 60 * 1000;
  let previous: number | undefined;
  let running = false;
  const tick = async () => {
    if (running) return; // a slow round (big SQLite log) must not overlap the next
    running = true;
    try {
      const current = await store.currentRevision();
      if (previous !== undefined) await store.compact(previous);
      previous = current;
    } catch (err) {
      options.onError?.(err instanceof Error ? err : new Error(String(err)));
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void tick(), intervalMs);
  timer.unref(); // never keep the process alive just to compact
  return { stop: () => clearInterval(timer) };
}
