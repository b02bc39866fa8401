/**
 * The QEMUs of a paused transfer run at the agent's priority for its length (docs/migration.md
 * "TCG: the guest pauses..."). Every QEMU's session (autogroup) gets the lightest weight
 * (qemu/priority.ts: nice 19, weight 15 against 1024 for a nice-0 session), so on a busy node
 * a stop-and-copy transfer, which is the guest's whole pause, crawled at a few percent of a core.
 * While the guest is paused its QEMUs do nothing but the transfer: the source's session and the
 * target's go to nice 0 until the guest has run on the target for ARRIVAL_BOOST_MS, or the source
 * resumes it after a failure; the weight they had is put back. A kernel without autogroups, or a QEMU whose session
 * is at nice 0 already (`--qemu-priority off`), is left as it is.
 */
import { readFile } from 'node:fs/promises';
import { autogroupNice, setAutogroupNice } from '../qemu/priority.ts';
import { runDirFiles } from '../qemu/process.ts';

/**
 * How long a guest that arrived keeps the boost: after a pause of up to seconds its first moments
 * are catching up (timer interrupts, the packets queued for it, the self-announce), which the
 * network sees as the rest of the interruption.
 */
export const ARRIVAL_BOOST_MS = 1000;

/** Puts back what boost() changed; safe to call more than once, and after QEMU exited. */
export type Unboost = () => Promise<void>;

/**
 * Gives the QEMU of `runDir` a nice-0 session while a paused guest moves. Resolves with the undo;
 * never throws (no pid file, no autogroup, refused: nothing changes and the undo does nothing).
 */
export async function boost(runDir: string): Promise<Unboost> {
  const pid = Number((await readFile(runDirFiles(runDir).pidfile, 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 0) return async () => undefined;
  const was = await autogroupNice(pid);
  if (was === undefined || was <= 0 || !(await setAutogroupNice(pid, 0))) return async () => undefined;
  let undone = false;
  return async () => {
    if (undone) return;
    undone = true;
    await setAutogroupNice(pid, was);
  };
}
