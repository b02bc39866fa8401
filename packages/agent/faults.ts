/**
 * Crash points for crash tests. With VESSEL_CRASH_AT=<point> in its environment the process
 * dies at that point by SIGKILL, as a power cut would, so a test can check that a restart
 * finishes or undoes the work. Tests in one process set a hook instead, which may throw.
 * VESSEL_DELAY_AT=<point> (VESSEL_DELAY_MS, default 5000) holds the process at a point instead,
 * so a test can kill another process while this one waits there.
 */
let hook: ((point: string) => void) | undefined;

export function setFaultHook(h: ((point: string) => void) | undefined): void {
  hook = h;
}

export function faultPoint(point: string): void {
  hook?.(point);
  if (process.env.VESSEL_CRASH_AT === point) process.kill(process.pid, 'SIGKILL');
}

/** Waits at `point` when VESSEL_DELAY_AT names it; resolves at once otherwise. */
export async function faultDelay(point: string): Promise<void> {
  if (process.env.VESSEL_DELAY_AT !== point) return;
  await new Promise((r) => setTimeout(r, Number(process.env.VESSEL_DELAY_MS ?? 5000)));
}
