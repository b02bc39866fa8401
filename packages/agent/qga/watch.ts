/**
 * Whether a running VM's guest agent answers, for the VMI condition AgentConnected (KubeVirt sets
 * it while qemu-ga is connected and removes it when the agent goes away). Pings the agent every
 * few seconds while it is silent (it starts late in a boot) and less often once it answers.
 */
import { setCondition } from '@vessel/runtime';
import { ping } from './client.ts';

export interface WatchOptions {
  /** Between pings while the agent does not answer (default 5 s). */
  silentIntervalMs?: number;
  /** Between pings while it answers (default 15 s). */
  connectedIntervalMs?: number;
}

/**
 * Calls `onChange` with the first ping's answer (a re-adopted VM may carry an old condition),
 * then whenever it changes. A failing onChange is called again after the next ping. Returns the
 * function that stops watching.
 */
export function watchAgent(socketPath: string, onChange: (connected: boolean) => unknown, opts: WatchOptions = {}): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let wake: (() => void) | undefined;
  let reported: boolean | undefined;
  const loop = async () => {
    while (!stopped) {
      const up = await ping(socketPath);
      if (stopped) return;
      if (up !== reported) {
        try {
          await onChange(up);
          reported = up;
        } catch {
          // the next round tries again
        }
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
        timer = setTimeout(resolve, up ? (opts.connectedIntervalMs ?? 15_000) : (opts.silentIntervalMs ?? 5000));
      });
    }
  };
  void loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
    wake?.();
  };
}

/** Sets (agent answers) or removes the AgentConnected condition in a VMI status; false when it is already so. */
export function agentConnected(status: Record<string, unknown>, connected: boolean): boolean {
  const conditions = (status.conditions as { type?: string; status?: string }[] | undefined) ?? [];
  const current = conditions.find((c) => c.type === 'AgentConnected');
  if (connected) {
    if (current?.status === 'True') return false;
    setCondition(status, { type: 'AgentConnected', status: 'True', reason: '', message: '' }, false);
  } else {
    if (!current) return false;
    status.conditions = conditions.filter((c) => c !== current);
  }
  return true;
}
