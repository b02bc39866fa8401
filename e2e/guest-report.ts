/**
 * What places a guest that went silent on its node after a migration (issue 13's drain sweep:
 * a VMI Running on its new node, no serial output there): the QEMU there as QMP tells it (run
 * state, incoming migration, the serial chardev, the vCPUs' RIP and halt state sampled twice,
 * the LAPIC timer), the QEMU process' CPU time over the same seconds, the serial log's size and
 * age, the tail of qemu.log, the VMI's Events and the agents' lines about it. Read-only: it only
 * asks; the guest is left as it is.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { runDirFiles } from '../packages/agent/qemu/process.ts';
import type { TestCluster } from './harness.ts';
import { runDirOf } from './tiny-vm.ts';

const EVENT: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Keeps the agents' log lines (startCluster's nodeLog), the last `max` of them. */
export function agentLines(max = 40_000): { add: (line: string) => void; about: (namespace: string, name: string) => string[] } {
  const lines: string[] = [];
  return {
    add(line) {
      lines.push(line);
      if (lines.length > max) lines.splice(0, lines.length - max);
    },
    // "migration: default/d2: ...", "vms: default/d2: ...": the VMI's key followed by a non-name character.
    about: (namespace, name) => lines.filter((l) => new RegExp(`${namespace}/${name}(?![\\w.-])`).test(l)),
  };
}

/** utime + stime of a process in clock ticks (undefined: gone). */
async function cpuTicks(pid: number): Promise<number | undefined> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (!text) return undefined;
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

/** CPU time and run-queue wait (ns) summed over a process' threads (schedstat of each task under /proc/PID/task); undefined: gone. */
async function schedTotals(pid: number): Promise<{ cpu: number; wait: number } | undefined> {
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => undefined);
  if (!tasks) return undefined;
  let cpu = 0;
  let wait = 0;
  for (const t of tasks) {
    const f = (await readFile(`/proc/${pid}/task/${t}/schedstat`, 'utf8').catch(() => '0 0')).trim().split(' ');
    cpu += Number(f[0]);
    wait += Number(f[1]);
  }
  return { cpu, wait };
}

/** nice and scheduling policy of a process (/proc/PID/stat fields 19 and 41). */
async function niceAndPolicy(pid: number): Promise<string> {
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return text ? `nice ${f[16]}, policy ${['OTHER', 'FIFO', 'RR', 'BATCH', 'ISO', 'IDLE'][Number(f[38])] ?? f[38]}` : '?';
}

/** The vCPUs' RIP and HLT flag from `info registers -a` (one line per vCPU). */
function registers(text: string): string {
  const rips = [...text.matchAll(/RIP=(\S+)/g)].map((m) => m[1]);
  const hlts = [...text.matchAll(/HLT=(\d)/g)].map((m) => m[1]);
  return rips.map((r, i) => `RIP=${r} HLT=${hlts[i] ?? '?'}`).join(', ') || text.slice(0, 200);
}

/** A multi-line report on VMI `name`'s QEMU on `node` and what is known about its guest. */
export async function silentGuestReport(
  c: TestCluster,
  namespace: string,
  name: string,
  node: string,
  lines?: { about: (namespace: string, name: string) => string[] },
): Promise<string> {
  const out: string[] = [`--- report on ${namespace}/${name} on ${node} ---`];
  const agent = c.nodes.agents.find((a) => a.nodeName === node);
  const dir = agent && (await runDirOf(agent.dataDir, namespace, name));
  const files = dir ? runDirFiles(dir) : undefined;
  const pid = files && Number((await readFile(files.pidfile, 'utf8').catch(() => '')).trim());
  const qmp = agent?.vms.qmpFor(namespace, name);
  const ticks0 = pid ? await cpuTicks(pid) : undefined;
  const sched0 = pid ? await schedTotals(pid) : undefined;
  out.push(
    `run directory: ${dir ?? 'none'}; QEMU pid ${pid || '?'} ${ticks0 === undefined ? 'not running' : `running (${await niceAndPolicy(pid!)})`}; host load ${(await readFile('/proc/loadavg', 'utf8')).trim()}`,
  );
  if (!qmp) out.push(`no QEMU session for it in ${node}'s runtime: the target QEMU was not taken over (or is gone)`);
  else {
    const ask = (cmd: string, args?: Record<string, unknown>) =>
      qmp.execute(cmd, args, { timeoutMs: 5000 }).then(
        (r) => JSON.stringify(r),
        (e: Error) => `error: ${e.message}`,
      );
    const hmp = (line: string) =>
      qmp.execute<string>('human-monitor-command', { 'command-line': line }, { timeoutMs: 5000 }).catch((e: Error) => `error: ${e.message}`);
    out.push(`query-status: ${await ask('query-status')}`);
    out.push(`query-migrate: ${await ask('query-migrate')}`);
    const chardevs = await qmp.execute<{ label: string; filename: string; 'frontend-open': boolean }[]>('query-chardev').catch(() => []);
    out.push(`chardevs: ${chardevs.map((d) => `${d.label}=${d.filename}${d['frontend-open'] ? '' : ' (frontend closed)'}`).join('; ')}`);
    const before = registers(await hmp('info registers -a'));
    await sleep(2000);
    out.push(`vCPUs: ${before}; 2 s later: ${registers(await hmp('info registers -a'))}`);
    out.push(`info lapic: ${(await hmp('info lapic')).replace(/\s+/g, ' ').slice(0, 600)}`);
  }
  const ticks1 = pid ? await cpuTicks(pid) : undefined;
  const sched1 = pid ? await schedTotals(pid) : undefined;
  // Starved (a cold translation cache after the move, at nice 10 under load) shows as wait far above CPU.
  if (ticks0 !== undefined && ticks1 !== undefined) out.push(`QEMU CPU time over the last ${qmp ? 2 : 0} s+: ${ticks1 - ticks0} ticks`);
  if (sched0 && sched1)
    out.push(
      `QEMU threads over the same time: ${((sched1.cpu - sched0.cpu) / 1e6).toFixed(0)} ms on CPU, ${((sched1.wait - sched0.wait) / 1e6).toFixed(0)} ms waiting to run`,
    );
  if (files) {
    const s = await stat(files.serialLog).catch(() => undefined);
    out.push(s ? `serial.log: ${s.size} bytes, written ${((Date.now() - s.mtimeMs) / 1000).toFixed(1)} s ago` : 'serial.log: missing');
    const log = (await readFile(files.log, 'utf8').catch(() => '')).trim().split('\n').slice(-8).join(' | ');
    out.push(`qemu.log tail: ${log || '(empty)'}`);
  }
  const events = (await c.client.list(EVENT, { namespace }).catch(() => ({ items: [] as KubeObject[] }))).items as unknown as {
    reason?: string;
    message?: string;
    involvedObject?: { kind?: string; name?: string };
    lastTimestamp?: string;
  }[];
  for (const e of events.filter((e) => e.involvedObject?.name === name || e.involvedObject?.name?.startsWith(`${name}-`)))
    out.push(`event ${e.lastTimestamp ?? ''} ${e.involvedObject?.kind}/${e.involvedObject?.name} ${e.reason}: ${e.message}`);
  if (lines) out.push(...lines.about(namespace, name).slice(-60));
  else out.push('(agent log lines not kept: pass nodeLog to startCluster)');
  // Also next to the source: the run directories of the other nodes (what the guest printed last there).
  for (const a of c.nodes.agents) {
    if (a.nodeName === node) continue;
    const d = await runDirOf(a.dataDir, namespace, name);
    const text = d ? await readFile(join(d, 'serial.log'), 'utf8').catch(() => '') : '';
    if (text) out.push(`serial tail on ${a.nodeName}: ${JSON.stringify(text.slice(-300))}`);
  }
  return out.join('\n');
}

/** The QEMU pid of VMI `name` on the agent of `dataDir` (its run directory's pidfile), if it runs. */
export async function qemuPidOf(dataDir: string, namespace: string, name: string): Promise<number | undefined> {
  const dir = await runDirOf(dataDir, namespace, name);
  const pid = dir ? Number((await readFile(runDirFiles(dir).pidfile, 'utf8').catch(() => '')).trim()) : 0;
  return pid && (await cpuTicks(pid)) !== undefined ? pid : undefined;
}

/** run_delay (ms) of a QEMU's main and vCPU threads: how long each has waited for a CPU. */
export async function runDelays(pid: number): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const task of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const comm = (await readFile(`/proc/${pid}/task/${task}/comm`, 'utf8').catch(() => '')).trim();
    if (task !== String(pid) && !comm.startsWith('CPU ')) continue;
    out.set(task, Number((await readFile(`/proc/${pid}/task/${task}/schedstat`, 'utf8').catch(() => '0 0')).split(' ')[1]) / 1e6);
  }
  return out;
}

/**
 * The time (ms) since `t0` during which the QEMU could run: the wall time minus the most one of
 * its main or vCPU threads waited for a CPU since `before` (runDelays at t0). A guest starved by
 * the host (QEMU at nice 10, SCHED_BATCH, autogroup 19 against nice-0 work) gets little of it; a
 * paused or hung guest halts or sleeps, which is not a wait for a CPU, so its time counts.
 */
export async function runnableSince(pid: number | undefined, t0: number, before: Map<string, number>): Promise<number> {
  let most = 0;
  if (pid) for (const [task, ms] of await runDelays(pid)) most = Math.max(most, ms - (before.get(task) ?? ms));
  return Math.max(0, Date.now() - t0 - most);
}

/**
 * Polls `check` until it gives a value, or the guest's QEMU (`pid`) could run for `runnableMs`
 * without one (runnableSince), or `wallMs` passed; value undefined then.
 */
export async function whileRunnable<T>(
  pid: number | undefined,
  check: () => Promise<T | undefined>,
  runnableMs: number,
  wallMs: number,
): Promise<{ value?: T; runnable: number; wall: number }> {
  const t0 = Date.now();
  const before = pid ? await runDelays(pid) : new Map<string, number>();
  for (;;) {
    const value = await check().catch(() => undefined);
    const runnable = await runnableSince(pid, t0, before);
    if (value !== undefined || runnable > runnableMs || Date.now() - t0 > wallMs) return { value, runnable, wall: Date.now() - t0 };
    await new Promise((r) => setTimeout(r, 250));
  }
}
