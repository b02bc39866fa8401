/**
 * Crash points for crash tests. With VESSEL_CRASH_AT=<point> in its environment the process
 * dies at that point by SIGKILL, as a power cut would, so a test can check that a restart
 * finishes or undoes the work. Tests in one process set a hook instead, which may throw.
 */
let hook: ((point: string) => void) | undefined;

export function setFaultHook(h: ((point: string) => void) | undefined): void {
  hook = h;
}

export function faultPoint(point: string): void {
  hook?.(point);
  if (process.env.VESSEL_CRASH_AT === point) process.kill(process.pid, 'SIGKILL');
}
