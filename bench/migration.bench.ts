/**
 * Live migration's interruption as seen on the network (issue 13): the longest gap between ping
 * replies and the longest stall of a TCP stream while a tiny guest migrates between the two
 * nodes of a dev cluster (Vessel: a VirtualMachineInstanceMigration; TLS, as by default), against
 * the same guest migrated by hand: raw QEMU with the argv the agent used (vm.json; disk, seed and
 * tap swapped), started in the two node namespaces of a second dev cluster on a hand-made bridge
 * + VXLAN, `-incoming defer` + `migrate-incoming` on the target, `migrate` over QMP on the source
 * (plain TCP, max-bandwidth lifted as the agent does). The observer is node 0's namespace in
 * both: `busybox ping -i 0.02` and `busybox nc` reading a line the guest writes every 20 ms;
 * a gap is the time between two arrivals in this process, from 1 s before the migration starts
 * to 2 s after it ends. Rounds go back and forth; figures are the median of the rounds' longest
 * gaps, Vessel / raw.
 *
 * Under TCG Vessel pauses the guest for its transfer; the raw baseline then does the same (`stop`
 * before `migrate`, `cont` on the target). BENCH_MIG_LIVE=1 keeps both running (Vessel's
 * `migration.vessel.io/tcg-live`). BENCH_MIG_POSTCOPY=1: the KubeVirt object allows post-copy
 * (migrations.allowPostCopy), so Vessel under TCG pauses the guest and starts post-copy at once;
 * the raw baselines do the same (`postcopy-ram` on both QEMUs, `stop`, `migrate`,
 * `migrate-start-postcopy`, no `cont`: QEMU 7.2's target starts the guest itself). The transfer
 * time is then until all pages arrived (the source's `completed`). BENCH_MIG_POSTCOPY=ab: rounds
 * alternate stop-and-copy (even) and post-copy (odd) on all three sides, figures for each kind
 * apart: the two compared under one load. BENCH_MIG_PLAIN=1: Vessel's stream without TLS too
 * (migrations.disableTLS). Each Vessel migration's migrationState.mode is checked against the kind
 * asked for (Paused, PostCopy).
 *
 * BENCH_MIG_PREEMPT=ab (with BENCH_MIG_POSTCOPY): the raw post-copy rounds alternate without (the
 * first) and with QEMU's `postcopy-preempt` capability (set on both raw QEMUs with `postcopy-ram`,
 * the target's before `migrate-incoming`; over TLS the second channel does its own handshake); `1`:
 * every raw post-copy round with it. Vessel's rounds do not change, and the Vessel / raw figures
 * compare against the raw rounds without it; preempt's own figures are raw with / without, plain
 * and TLS apart. Whether the requested pages took the second channel is checked on each raw
 * post-copy round: the source's TCP connections to the target's port (`ss -tni` in its namespace,
 * sampled every 100 ms until `completed`: how many, bytes each), the source's `postcopy-requests`,
 * the target's `postcopy-blocktime` (vCPU time spent waiting for faulted pages) and, with the
 * switch set, QEMU's `postcopy_preempt_*` trace events (`-trace`, into each raw QEMU's log). A raw
 * migration that fails (`postcopy-paused` included: 7.2's preempt channel once broke the stream) is
 * a PROBLEM with the target's last log lines; a fresh raw guest is booted and the rounds go on.
 *
 * The pause is taken apart with QEMU's event times (migration-timeline.ts): source STOP → setup →
 * active → completed, target completed → RESUME; in post-copy source active → postcopy-active →
 * target RESUME (which comes before the target's completed), the pause still STOP → RESUME.
 * Vessel's from the agents' `timeline` log lines, the raw baseline's from its own QMP connections. The raw baseline runs each round twice: over
 * plain TCP and over TLS with the credentials the agents wrote for the same node pair (so TLS's
 * share of the pause is known). Each round migrates Vessel's guest, then the raw one plainly, then
 * over TLS, so the three see the same load.
 *
 *   node --import tsx bench/migration.bench.ts     # 2-4 minutes on 2 cores (8 rounds: ~2 at load 2); env BENCH_MIG_GAP_ROUNDS (4), BENCH_MIG_LIVE, BENCH_MIG_POSTCOPY, BENCH_MIG_PLAIN, BENCH_MIG_PREEMPT
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_QEMU_PRIORITY, qemuImg } from '@vessel/agent';
import { migration } from '@vessel/api';
import type { ResourceRef } from '@vessel/client';
import { startCluster, type TestCluster } from '../e2e/harness.ts';
import { runDirOf, tinyVm } from '../e2e/tiny-vm.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { createDevCluster, type DevCluster } from '../packages/agent/network/devcluster.ts';
import { bridgeCmd, ip } from '../packages/agent/network/exec.ts';
import { buildCloudInitIso } from '../packages/agent/qemu/cloudinit.ts';
import { findPriorityTools } from '../packages/agent/qemu/priority.ts';
import { launch, runDirFiles, terminate, waitForSerial } from '../packages/agent/qemu/process.ts';
import { QmpClient } from '../packages/agent/qmp/client.ts';
import { cloneVolume } from '../packages/agent/storage/clone.ts';
import { MigrationTimeline, parseTimeline, pauseSegments, type Marks, type PauseSegments } from '../packages/agent/vms/migration-timeline.ts';
import {
  chardevsOf,
  envInt,
  isMain,
  loadLine,
  median,
  ms,
  now,
  pollUntil,
  printResult,
  PVCS,
  sleep,
  volumePath,
  type BenchResult,
  type Figure,
} from './lib.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const NS = 'default';
const NAME = 'bench-gap';
const ROUNDS = envInt('BENCH_MIG_GAP_ROUNDS', 4);
/** BENCH_MIG_LIVE=1: both guests run during the transfer (Vessel's migration.vessel.io/tcg-live); else both pause for it, as Vessel under TCG. */
const LIVE = process.env.BENCH_MIG_LIVE === '1';
/** BENCH_MIG_POSTCOPY=1: post-copy allowed, the paused guests go to post-copy at once (Vessel and raw). `ab`: odd rounds only. */
const POSTCOPY = process.env.BENCH_MIG_POSTCOPY === '1';
const AB = process.env.BENCH_MIG_POSTCOPY === 'ab';
const postcopyRound = (i: number): boolean => POSTCOPY || (AB && i % 2 === 1);
/** BENCH_MIG_PREEMPT=ab: raw post-copy rounds alternate without / with postcopy-preempt (the n-th post-copy round: odd n with); `1`: all with it. */
const PREEMPT = process.env.BENCH_MIG_PREEMPT;
const preemptRound = (i: number): boolean => {
  if (!postcopyRound(i)) return false;
  if (PREEMPT === '1') return true;
  // The ordinal of this round among the post-copy ones.
  const n = POSTCOPY ? i : (i - 1) / 2;
  return PREEMPT === 'ab' && n % 2 === 1;
};
/** BENCH_MIG_PLAIN=1: Vessel's migration stream over plain TCP (migrations.disableTLS), as raw plain. */
const PLAIN = process.env.BENCH_MIG_PLAIN === '1';
const KV: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'kubevirts', namespaced: true };
const BOOT_TIMEOUT_MS = 600_000;
/** The raw guest's static address and the observer's on the hand-made bridge (inside the baseline's namespaces). */
const RAW_ADDR = '10.244.0.60';
const RAW_OBSERVER = '10.244.255.250';
const TICK_PORT = 9000;
/** QEMU 7.2's trace events that show the preempt channel made (new_channel, tls_handshake, the target's thread) and used (switch_channel 1). */
const PREEMPT_TRACE = ['new_channel', 'tls_handshake', 'thread_entry', 'switch_channel'];

/** The guest writes a line every 20 ms to whoever connects on TICK_PORT (the TCP stall probe). */
const tickServer =
  `printf '#!/bin/sh\\nwhile true; do echo t; usleep 20000; done\\n' >/run/tick; chmod +x /run/tick\n` +
  `(while true; do nc -l -p ${TICK_PORT} -e /run/tick; done) &\necho VESSEL-TICK-READY\n`;
/** Raw QEMU's user data: no DHCP server on the hand-made network, so a static address. */
const rawUserData =
  '#!/bin/sh\n' +
  'i=0; while [ -z "$(pidof udhcpc)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n' +
  'killall udhcpc 2>/dev/null\n' +
  `ip -4 addr flush dev eth0; ip addr add ${RAW_ADDR}/16 dev eth0; ip link set eth0 up\n` +
  tickServer;

/** Arrival times of a process's output chunks (this process's clock, ms). */
class Arrivals {
  readonly at: number[] = [];
  constructor(readonly proc: ChildProcess) {
    proc.stdout!.on('data', () => this.at.push(now()));
    proc.on('error', () => undefined);
  }
  /**
   * The longest time without an arrival within [from, to], the window's edges included: a
   * stream that stops at the pause and has not come back by `to` counts from its last arrival
   * to `to` (counting only between arrivals once reported 30-40 ms for a raw guest that had
   * paused 300 ms and was not heard from again within the window).
   */
  longestGap(from: number, to: number): number {
    const xs = [from, ...this.at.filter((t) => t >= from && t <= to), to];
    let gap = 0;
    for (let i = 1; i < xs.length; i++) gap = Math.max(gap, xs[i] - xs[i - 1]);
    return gap;
  }
}

/** A ping every 20 ms and a TCP line reader, both from `netns`, towards `addr`. */
function observe(netns: string, addr: string): { ping: Arrivals; tcp: Arrivals; stop(): void } {
  const ping = new Arrivals(spawn('ip', ['netns', 'exec', netns, 'busybox', 'ping', '-i', '0.02', addr], { stdio: ['ignore', 'pipe', 'ignore'] }));
  const tcp = new Arrivals(
    spawn('ip', ['netns', 'exec', netns, 'sh', '-c', `while true; do busybox nc ${addr} ${TICK_PORT}; sleep 0.2; done`], {
      stdio: ['pipe', 'pipe', 'ignore'],
      detached: true,
    }),
  );
  return {
    ping,
    tcp,
    stop() {
      ping.proc.kill('SIGKILL');
      // The reconnecting loop and its nc: the whole process group.
      if (tcp.proc.pid) process.kill(-tcp.proc.pid, 'SIGKILL');
    },
  };
}

interface Round {
  /** Post-copy from the paused source (else stop-and-copy, or live with BENCH_MIG_LIVE). */
  postcopy: boolean;
  ping: number;
  tcp: number;
  transferMs: number;
  /** The pause taken apart (QEMU's event times), when both sides' marks were seen. */
  seg?: PauseSegments;
  /** Bytes QEMU sent (query-migrate's ram.transferred; Vessel's from the source's timeline line). */
  bytes?: number;
  /** Raw post-copy rounds: postcopy-preempt on, and what shows whether its channel carried the requested pages. */
  preempt?: boolean;
  channels?: ChannelCheck;
  /** The 1-minute load average when the migration started (another user's tests share the machine). */
  load?: number;
  /** A raw migration that failed: why (its figures are NaN and left out). */
  failed?: string;
}

/** The source QEMU's TCP connections to the target's migration port, seen during a raw post-copy round. */
interface ChannelCheck {
  /** Bytes sent on each connection (the last sample), the largest first: [main, preempt?]. */
  sent: number[];
  /** Page requests the source answered (its query-migrate ram.postcopy-requests). */
  requests?: number;
  /** vCPU time blocked on faulted pages, all vCPUs overlapped (the target's postcopy-blocktime, ms). */
  blocktimeMs?: number;
  /** QEMU's postcopy_preempt_* trace events (source + target), by name, when traced. */
  trace?: Record<string, number>;
}

/** The established TCP connections in `netns` towards `port`: local address → bytes sent (`ss -tni`). */
async function connectionsTo(netns: string, port: string): Promise<Map<string, number>> {
  const out = await new Promise<string>((resolve) =>
    execFile('ip', ['netns', 'exec', netns, 'ss', '-tniH', 'state', 'established', 'dport', '=', `:${port}`], (e, stdout) => resolve(e ? '' : stdout)),
  );
  const conns = new Map<string, number>();
  let local: string | undefined;
  for (const line of out.split('\n')) {
    // A socket's line (Recv-Q Send-Q Local Peer), then its indented info line.
    if (/^\S/.test(line)) local = line.trim().split(/\s+/)[2];
    else if (local && line.trim()) {
      // bytes_sent is left out while 0.
      conns.set(local, Number(/bytes_sent:(\d+)/.exec(line)?.[1] ?? 0));
      local = undefined;
    }
  }
  return conns;
}

/** The `postcopy_preempt_*` trace events in QEMU logs (`-D`) past an offset (a QEMU is the source of the round after the one it received), by name. */
async function traceCounts(files: { path: string; from: number }[]): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const f of files) {
    const text = (await readFile(f.path).catch(() => Buffer.alloc(0))).subarray(f.from).toString('utf8');
    // A switch to channel 1 is a requested page sent over the preempt channel.
    for (const m of text.matchAll(/^(?:\d+@[\d.]+:)?(postcopy_preempt_switch_channel 1|postcopy_preempt_\w+)/gm)) counts[m[1]] = (counts[m[1]] ?? 0) + 1;
  }
  return counts;
}

const SEGMENTS: readonly (readonly [keyof PauseSegments, string])[] = [
  ['stopToSetup', 'source STOP → MIGRATION setup'],
  ['setupToActive', 'source setup → active (connect, TLS handshake)'],
  ['transfer', 'source active → completed (transfer)'],
  ['srcToDstCompleted', 'source completed → target completed'],
  ['completedToResume', 'target completed → RESUME'],
  ['total', 'source STOP → target RESUME (the pause)'],
];
/** Post-copy: the target runs the guest from the switch-over on (RESUME before its completed). */
const POSTCOPY_SEGMENTS: readonly (readonly [keyof PauseSegments, string])[] = [
  ['stopToSetup', 'source STOP → MIGRATION setup'],
  ['setupToActive', 'source setup → active (connect, TLS handshake)'],
  ['toPostcopy', 'source active → postcopy-active'],
  ['postcopyToResume', 'source postcopy-active → target RESUME (devices sent, loaded)'],
  ['total', 'source STOP → target RESUME (the pause)'],
  ['transfer', 'source active → completed (all pages sent, guest running)'],
];

/** The newest credentials directory an agent wrote for a peer (`<dataDir>/migration-tls/<peer>/<hash>`). */
async function tlsDirOf(dataDir: string, peer: string): Promise<string> {
  const base = join(dataDir, 'migration-tls', peer);
  const sets = await readdir(base);
  let best: { dir: string; at: number } | undefined;
  for (const d of sets) {
    const at = (await stat(join(base, d))).mtimeMs;
    if (!best || at > best.at) best = { dir: join(base, d), at };
  }
  if (!best) throw new Error(`no migration TLS credentials in ${base}`);
  return best.dir;
}

/**
 * Raw post-copy rounds with postcopy-preempt against those without, one stream kind: the longest
 * gaps, the transfer and the blocked vCPU time (with / without), and the channel check (a
 * with-round whose source had fewer than two connections to the target, or a without-round with
 * two, is a PROBLEM).
 */
function preemptFigures(rounds: Round[], over: string, problems: string[]): Figure[] {
  const all = rounds.filter((x) => x.postcopy);
  const failed = (p: boolean) => all.filter((x) => x.failed && !!x.preempt === p).length;
  const pc = all.filter((x) => !x.failed);
  const [on, off] = [pc.filter((x) => x.preempt), pc.filter((x) => !x.preempt)];
  for (const [j, x] of pc.entries()) {
    const n = x.channels?.sent.length ?? 0;
    if (x.preempt ? n < 2 : n > 1)
      problems.push(`raw ${over} post-copy round ${j}${x.preempt ? ' with' : ' without'} postcopy-preempt: ${n} connection(s) to the target`);
  }
  const loads = (rs: Round[]) => rs.map((x) => x.load?.toFixed(1) ?? '?').join(', ');
  const range = (v: number[]) => (v.length ? `${ms(Math.min(...v))}–${ms(Math.max(...v))}` : 'n/a');
  const figs: Figure[] = [];
  const values: readonly (readonly [string, (x: Round) => number | undefined])[] = [
    ['longest ping gap', (x) => x.ping],
    ['longest TCP stall', (x) => x.tcp],
    ['transfer (until all pages arrived)', (x) => x.transferMs],
    ["target's postcopy-blocktime (vCPUs waiting on faulted pages)", (x) => x.channels?.blocktimeMs],
  ];
  for (const [what, get] of values) {
    const [a, b] = [on, off].map((rs) => rs.map(get).filter((v): v is number => v !== undefined));
    figs.push({
      name: `raw ${over} post-copy: ${what}, with postcopy-preempt / without (median of ${a.length} / ${b.length}; failed ${failed(true)} / ${failed(false)})`,
      ratio: median(a) / median(b),
      detail: `with ${a.map(ms).join(', ')} (${range(a)}); without ${b.map(ms).join(', ')} (${range(b)}) [${loadLine()}; at each start: with ${loads(on)}, without ${loads(off)}]`,
    });
  }
  // The second connection's bytes against the requested pages (4 KiB each, plus a header).
  const each = (rs: Round[], f: (c: ChannelCheck) => number | undefined) => rs.map((x) => (x.channels && f(x.channels)) ?? '?').join(', ');
  figs.push({
    name: `raw ${over} post-copy with postcopy-preempt: KiB on the second connection / KiB requested (4 KiB × postcopy-requests)`,
    ratio: median(on.map((x) => (x.channels?.sent[1] ?? 0) / (4096 * (x.channels?.requests ?? NaN)))),
    detail:
      `with: second connection ${each(on, (c) => Math.round((c.sent[1] ?? 0) / 1024))} KiB, requests ${each(on, (c) => c.requests)}, ` +
      `switches to the preempt channel (trace) ${each(on, (c) => c.trace?.['postcopy_preempt_switch_channel 1'] ?? 0)}, ` +
      `TLS handshakes on it ${each(on, (c) => c.trace?.postcopy_preempt_tls_handshake ?? 0)}; ` +
      `without: requests ${each(off, (c) => c.requests)}, connections ${each(off, (c) => c.sent.length)}`,
  });
  return figs;
}

/** One migration observed: gaps from 1 s before `migrate()` to 2 s after it returns. */
async function observed(
  netns: string,
  addr: string,
  kind: Pick<Round, 'postcopy' | 'preempt'>,
  migrate: () => Promise<{ took: number; seg?: PauseSegments; bytes?: number; channels?: ChannelCheck }>,
): Promise<Round> {
  const o = observe(netns, addr);
  try {
    await pollUntil('the observer receiving', async () => (o.ping.at.length > 5 && o.tcp.at.length > 5 ? true : undefined), 60_000, 100).catch((e: Error) => {
      throw new Error(`${e.message} (${o.ping.at.length} ping replies, ${o.tcp.at.length} TCP lines from ${addr})`);
    });
    await sleep(1000);
    const from = now();
    const load = loadavg()[0];
    const r = await migrate();
    const { took: transferMs, seg, bytes, channels } = r;
    await sleep(2000);
    const to = now();
    return { ...kind, load, ping: o.ping.longestGap(from, to), tcp: o.tcp.longestGap(from, to), transferMs, seg, bytes, channels };
  } finally {
    o.stop();
  }
}

export async function runMigrationGap(): Promise<BenchResult> {
  const started = now();
  const problems: string[] = [];
  const figures: Figure[] = [];
  const dir = await mkdtemp(join(tmpdir(), 'vessel-migbench-'));
  let c: TestCluster | undefined;
  let raw: DevCluster | undefined;
  const rawDirs: string[] = [];
  try {
    // The agents' `timeline` lines (migration-timeline.ts): each migration's pause, both sides.
    const timelines: string[] = [];
    c = await startCluster({ nodes: 2, nodeLog: (l) => void (l.includes(`${NS}/${NAME}: timeline `) && timelines.push(l)) });
    const client = c.client;
    if (LIVE && (POSTCOPY || AB)) throw new Error('BENCH_MIG_POSTCOPY is for the paused guest: not with BENCH_MIG_LIVE');
    if (PREEMPT && !(POSTCOPY || AB)) throw new Error('BENCH_MIG_PREEMPT is for the post-copy rounds: set BENCH_MIG_POSTCOPY too');
    // The KubeVirt object's migration settings (the migration controller copies them into each migration).
    const migrations = (postcopy: boolean) =>
      client.patch(
        KV,
        'kubevirt',
        { spec: { configuration: { migrations: { ...(POSTCOPY || AB ? { allowPostCopy: postcopy } : {}), ...(PLAIN ? { disableTLS: true } : {}) } } } },
        { namespace: 'kubevirt' },
      );
    if (POSTCOPY || AB || PLAIN) await migrations(postcopyRound(0));
    await ensureTinyImage(client, () => undefined, { storageClass: 'shared' });
    await client.create(
      VM,
      tinyVm(NAME, {
        namespace: NS,
        binding: 'bridge',
        storageClass: 'shared',
        terminationGracePeriodSeconds: 2,
        userData: `#!/bin/sh\n${tickServer}`,
        annotations: LIVE ? { [migration.TCG_LIVE_ANNOTATION]: 'true' } : undefined,
      }),
      {
        namespace: NS,
      },
    );
    type St = { phase?: string; nodeName?: string; interfaces?: { ipAddress?: string }[]; conditions?: { type: string; status: string }[] };
    const status = async () => ((await client.get(VMI, NAME, { namespace: NS }).catch(() => undefined))?.status ?? {}) as St;
    const ready = async () => {
      const s = await status();
      return s.phase === 'Running' && s.interfaces?.[0]?.ipAddress && s.conditions?.find((x) => x.type === 'Ready')?.status === 'True' ? s : undefined;
    };
    // A starved TCG guest may panic at boot ("IO-APIC + timer doesn't work"): its VMI is deleted and the VM starts it again.
    const booted = async (): Promise<{ addr: string; runDir: string }> => {
      // The run directory is the VM's: a restarted guest appends to the same serial.log.
      let since = 0;
      for (let attempt = 0; ; attempt++) {
        const first = await pollUntil('the VMI Running with its IP', ready, BOOT_TIMEOUT_MS);
        const agent0 = c!.nodes.agents.find((a) => a.nodeName === first.nodeName)!;
        const dir = (await runDirOf(agent0.dataDir, NS, NAME))!;
        const m = await waitForSerial(dir, /VESSEL-TICK-READY|Kernel panic/, BOOT_TIMEOUT_MS, { since });
        if (!/panic/.test(m.match[0]) || attempt >= 2) return { addr: first.interfaces![0].ipAddress!, runDir: dir };
        console.log('PROBLEM: the guest panicked at boot (a starved TCG host); starting it again');
        since = m.offset;
        const uid = (await client.get(VMI, NAME, { namespace: NS })).metadata!.uid;
        await client.delete(VMI, NAME, { namespace: NS });
        await pollUntil(
          'a new VMI',
          async () => ((await client.get(VMI, NAME, { namespace: NS }).catch(() => undefined))?.metadata?.uid !== uid ? true : undefined),
          120_000,
        );
      }
    };
    const { addr, runDir } = await booted();
    const argv = (JSON.parse(await readFile(join(runDir, 'vm.json'), 'utf8')) as { argv: string[] }).argv;
    const observer = c.nodes.cluster.nodes[0].netns;

    // Raw QEMU: the same argv in the second dev cluster's namespaces, on a bridge + VXLAN made here.
    raw = await createDevCluster({ nodes: 2 });
    const taps: string[] = [];
    for (const [i, n] of raw.nodes.entries()) {
      const peer = raw.nodes[1 - i];
      await ip(n.netns, ['link', 'add', 'br0', 'type', 'bridge']);
      await ip(n.netns, ['link', 'set', 'br0', 'mtu', '1450', 'up']);
      await ip(n.netns, ['link', 'add', 'vx0', 'type', 'vxlan', 'id', '1', 'dstport', '4789', 'local', n.fabricIp, 'nolearning']);
      await ip(n.netns, ['link', 'set', 'vx0', 'mtu', '1450', 'master', 'br0', 'up']);
      await bridgeCmd(n.netns, ['fdb', 'append', '00:00:00:00:00:00', 'dev', 'vx0', 'dst', peer.fabricIp]);
      const tap = `rawtap${i}`;
      await ip(n.netns, ['tuntap', 'add', 'dev', tap, 'mode', 'tap']);
      await ip(n.netns, ['link', 'set', tap, 'mtu', '1450', 'master', 'br0', 'up']);
      taps.push(tap);
    }
    await ip(raw.nodes[0].netns, ['addr', 'add', `${RAW_OBSERVER}/16`, 'dev', 'br0']);
    const golden = volumePath(await client.get(PVCS, 'tiny', { namespace: 'vessel-images' }));
    if (!golden) throw new Error('claim vessel-images/tiny has no vessel.io/volume-path');
    const disk = join(dir, 'raw.qcow2');
    await cloneVolume({ source: golden, dest: disk, size: (await qemuImg.info(golden, { format: 'qcow2', forceShare: true })).virtualSize, linked: true });
    const iso = join(dir, 'raw-cidata.iso');
    await buildCloudInitIso({ kind: 'noCloud', userData: rawUserData, metaData: { instanceId: 'raw-gap', localHostname: 'raw-gap' }, dest: iso });
    const own = (a: string) => /(?:^|,)filename=([^,]+)/.exec(a)?.[1];
    // The log backend's trace lines go to the QEMU log launch() sets (-D).
    const traceLog = (d: string) => runDirFiles(d).log;
    const tools = await findPriorityTools();
    let launched = 0;
    const rawLaunch = async (node: number, incoming: boolean): Promise<string> => {
      const d = join(dir, `raw-${launched++}`);
      await mkdir(d, { recursive: true });
      rawDirs.push(d);
      const swap = (a: string): string => {
        const f = own(a);
        if (f?.endsWith('.iso')) return a.replace(f, iso);
        if (f?.startsWith('/') && !f.startsWith('/dev/')) return a.replace(f, disk);
        return a.replace(/(^|,)ifname=[^,]+/, `$1ifname=${taps[node]}`);
      };
      const a = argv.map(swap);
      if (a.filter((x, j) => x !== argv[j]).length !== 3) throw new Error(`the raw argv: disk, seed and tap not all swapped: ${argv.join(' ')}`);
      // With BENCH_MIG_PREEMPT every raw QEMU traces the preempt channel's events (none fire without the capability);
      // not postcopy_preempt_send_host_page, which fires for every page sent (~37000 log lines a migration).
      if (PREEMPT) for (const e of PREEMPT_TRACE) a.push('-trace', `enable=postcopy_preempt_${e}`);
      await launch({
        runDir: d,
        argv: incoming ? [...a, '-incoming', 'defer'] : a,
        chardevs: chardevsOf(argv),
        vnc: true,
        noShutdown: true,
        vm: { namespace: 'bench', name: `raw-gap-${launched}` },
        priority: { nice: DEFAULT_QEMU_PRIORITY.nice, batch: DEFAULT_QEMU_PRIORITY.batch, tools },
        netns: raw!.nodes[node].netns,
      });
      return d;
    };
    let srcNode = 0;
    let src = await rawLaunch(0, false);
    await waitForSerial(src, 'VESSEL-TICK-READY', BOOT_TIMEOUT_MS);
    const rawRounds: Round[] = [];
    const rawTlsRounds: Round[] = [];
    // Vessel's agents, in node order: their credentials for each other serve the raw TLS rounds.
    const agents = c.nodes.cluster.nodes.map((n) => c!.nodes.agents.find((a) => a.nodeName === n.name)!);

    // Vessel: a migration object each round, back and forth.
    const vessel: Round[] = [];
    let sides: { source?: Marks; target?: Marks } = {};
    // One migration each per round, Vessel's then raw plain then raw TLS, so all three see the same load.
    for (let i = 0; i < ROUNDS; i++) {
      const from = (await status()).nodeName;
      const pc = postcopyRound(i);
      const preempt = preemptRound(i);
      vessel.push(
        await observed(observer, addr, { postcopy: pc }, async () => {
          const name = `gap-${i}`;
          await client.create(
            VMIM,
            { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: NS }, spec: { vmiName: NAME } },
            { namespace: NS },
          );
          type Ms = { phase?: string; migrationState?: { startTimestamp?: string; endTimestamp?: string; failureReason?: string } };
          const done = await pollUntil(
            `migration ${name}`,
            async () => {
              const s = ((await client.get(VMIM, name, { namespace: NS })).status ?? {}) as Ms;
              return s.phase === 'Succeeded' || s.phase === 'Failed' ? s : undefined;
            },
            600_000,
            50,
          );
          if (done.phase !== 'Succeeded') throw new Error(`migration ${name} failed: ${done.migrationState?.failureReason}`);
          await pollUntil('the VMI Running on the target', async () => ((await ready())?.nodeName !== from ? true : undefined), 120_000, 50);
          let bytes: number | undefined;
          const took = Date.parse(done.migrationState!.endTimestamp!) - Date.parse(done.migrationState!.startTimestamp!);
          // Both sides' lines of this migration: the last source and target ones logged so far.
          const seen = await pollUntil(
            'both agents logging the timeline',
            async () => {
              for (const l of timelines.splice(0)) {
                const p = parseTimeline(l);
                if (p) sides[p.side] = p.marks;
                const sent = /(\d+) bytes sent/.exec(l);
                if (p?.side === 'source' && sent) bytes = Number(sent[1]);
              }
              return sides.source && sides.target ? { source: sides.source, target: sides.target } : undefined;
            },
            10_000,
            50,
          ).catch(() => undefined);
          sides = {};
          if (!seen) problems.push(`vessel round ${i}: no timeline line from both agents within 10 s`);
          // The kind this migration was: Paused (stop-and-copy) or PostCopy (migrationState.mode).
          const mode = ((await client.get(VMI, NAME, { namespace: NS })).status as { migrationState?: { mode?: string } } | undefined)?.migrationState?.mode;
          const want = LIVE ? undefined : pc ? 'PostCopy' : 'Paused';
          if (want && mode !== want) problems.push(`vessel round ${i}: migrationState.mode ${mode ?? '(none)'}, expected ${want}`);
          return { took, seg: seen ? pauseSegments(seen.source, seen.target) : undefined, bytes };
        }),
      );
      console.log(`vessel round ${i}${pc ? ' (post-copy)' : ''}: ${JSON.stringify(vessel.at(-1))}`);
      // The next round's kind, set now: the controller's informer has the raw rounds' time to see it.
      if (AB && i + 1 < ROUNDS) await migrations(postcopyRound(i + 1));
      for (const tls of [false, true]) {
        const dstNode = 1 - srcNode;
        const dst = await rawLaunch(dstNode, true);
        const kind = { postcopy: pc, preempt };
        const over = tls ? 'TLS' : 'plain';
        (tls ? rawTlsRounds : rawRounds).push(
          await observed(raw.nodes[0].netns, RAW_ADDR, kind, async () => {
            const tq = await QmpClient.connect(runDirFiles(dst).qmp, { timeoutMs: 10_000, waitForSocket: true });
            const sq = await QmpClient.connect(runDirFiles(src).qmp, { timeoutMs: 10_000, waitForSocket: true });
            const st = new MigrationTimeline().attach(sq);
            const dt = new MigrationTimeline().attach(tq);
            try {
              // The MIGRATION events carry the breakdown's times (as the agents turn them on); post-copy
              // set either way on both (a QEMU keeps its capabilities from the migration before).
              // postcopy-preempt needs postcopy-ram on (set together) and, on the target, comes before migrate-incoming.
              const caps = [
                { capability: 'events', state: true },
                { capability: 'postcopy-ram', state: pc },
                { capability: 'postcopy-preempt', state: preempt },
              ];
              for (const q of [sq, tq]) await q.execute('migrate-set-capabilities', { capabilities: caps });
              // The target's vCPU time blocked on faulted pages (query-migrate postcopy-blocktime).
              await tq.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-blocktime', state: pc }] });
              const traceFrom = PREEMPT
                ? await stat(traceLog(src)).then(
                    (x) => x.size,
                    () => 0,
                  )
                : 0;
              if (tls) {
                const [sa, da] = [agents[srcNode], agents[dstNode]];
                await tq.execute('object-add', {
                  'qom-type': 'tls-creds-x509',
                  id: 'raw-tls',
                  dir: await tlsDirOf(da.dataDir, sa.nodeName),
                  endpoint: 'server',
                  'verify-peer': true,
                });
                await sq.execute('object-del', { id: 'raw-tls' }).catch(() => undefined);
                await sq.execute('object-add', {
                  'qom-type': 'tls-creds-x509',
                  id: 'raw-tls',
                  dir: await tlsDirOf(sa.dataDir, da.nodeName),
                  endpoint: 'client',
                  'verify-peer': true,
                });
                await tq.execute('migrate-set-parameters', { 'tls-creds': 'raw-tls' });
                await sq.execute('migrate-set-parameters', { 'tls-creds': 'raw-tls', 'tls-hostname': da.nodeName });
              } else {
                await tq.execute('migrate-set-parameters', { 'tls-creds': '' });
                await sq.execute('migrate-set-parameters', { 'tls-creds': '' });
              }
              await tq.execute('migrate-incoming', { uri: `tcp:${raw!.nodes[dstNode].fabricIp}:0` });
              const port = (await tq.execute<{ 'socket-address'?: { port?: string }[] }>('query-migrate'))['socket-address']?.[0]?.port;
              await sq.execute('migrate-set-parameters', { 'max-bandwidth': 1e12 });
              const t0 = Date.now();
              // As Vessel under TCG: the guest paused for the transfer (stop-and-copy), unless live.
              if (!LIVE) await sq.execute('stop');
              await sq.execute('migrate', { uri: `tcp:${raw!.nodes[dstNode].fabricIp}:${port}` });
              // As the agent: taken once `migrate` set the migration up, switching at the first iteration.
              if (pc) await sq.execute('migrate-start-postcopy');
              // Post-copy: the source's connections to the target's port, sampled until completed (they close then).
              const sent = new Map<string, number>();
              let sampling = pc;
              const sampler = (async () => {
                while (sampling) {
                  for (const [k, v] of await connectionsTo(raw!.nodes[srcNode].netns, String(port))) sent.set(k, v);
                  await sleep(100);
                }
              })();
              type Mq = { status?: string; 'error-desc'?: string; ram?: { transferred?: number; 'postcopy-requests'?: number } };
              const info = await pollUntil(
                'the raw migration completed',
                async () => {
                  const q = await sq.execute<Mq>('query-migrate');
                  if (q.status === 'failed' || q.status === 'cancelled') throw new Error(`raw migration ${q.status}: ${q['error-desc']}`);
                  // A broken post-copy stream pauses (recoverable with migrate-recover; not tried here): the target's log says why.
                  if (q.status === 'postcopy-paused') {
                    const log = (await readFile(traceLog(dst), 'utf8').catch(() => '')).split('\n');
                    throw new Error(
                      `raw migration postcopy-paused; the target's log: ${log
                        .filter((l) => / qemu-system-\w+: /.test(l))
                        .slice(-3)
                        .join(' | ')}`,
                    );
                  }
                  return q.status === 'completed' ? q : undefined;
                },
                600_000,
                50,
              ).finally(() => (sampling = false));
              const took = Date.now() - t0;
              await sampler;
              // Post-copy asked for but precopy completed first (migrate-start-postcopy came too late):
              // the guest paused on the target as after a stop-and-copy, so it is resumed as one.
              const switched = pc && st.marks['postcopy-active'] !== undefined;
              if (pc && !switched) problems.push(`raw ${tls ? 'TLS' : 'plain'} round ${i}: post-copy asked for, precopy completed first`);
              if (switched) {
                // QEMU 7.2's target ran the guest at the switch-over (RESUME) and completes once the last page is in.
                await pollUntil(
                  'the raw post-copy target RESUME and completed events',
                  async () => (dt.marks.resume !== undefined && dt.marks.completed !== undefined ? true : undefined),
                  10_000,
                  10,
                ).catch(() => undefined);
              } else if (!LIVE) {
                await pollUntil(
                  'the raw target loaded',
                  async () => ((await tq.execute<{ status: string }>('query-status')).status !== 'inmigrate' ? true : undefined),
                  60_000,
                  20,
                );
                await tq.execute('cont');
                await pollUntil('the raw target RESUME event', async () => (dt.marks.resume !== undefined ? true : undefined), 10_000, 10).catch(
                  () => undefined,
                );
              }
              let channels: ChannelCheck | undefined;
              if (pc) {
                const blocktime = (await tq.execute<{ 'postcopy-blocktime'?: number }>('query-migrate').catch(() => undefined))?.['postcopy-blocktime'];
                channels = { sent: [...sent.values()].sort((x, y) => y - x), requests: info.ram?.['postcopy-requests'], blocktimeMs: blocktime };
                if (PREEMPT)
                  channels.trace = await traceCounts([
                    { path: traceLog(src), from: traceFrom },
                    { path: traceLog(dst), from: 0 },
                  ]);
              }
              await sq.execute('quit').catch(() => undefined);
              return { took, seg: pauseSegments(st.marks, dt.marks), bytes: info.ram?.transferred, channels };
            } finally {
              st.detach();
              dt.detach();
              await sq.close();
              await tq.close();
            }
          }).catch(async (e: Error): Promise<Round> => {
            // A raw migration that failed (QEMU 7.2's preempt channel once broke the stream): counted, and a
            // fresh raw guest booted where the old one was, so the rounds go on.
            problems.push(`raw ${over} round ${i}${preempt ? ' (preempt)' : ''}: ${e.message}`);
            await terminate(dst, { graceMs: 2000 }).catch(() => undefined);
            await terminate(src, { graceMs: 2000 }).catch(() => undefined);
            src = await rawLaunch(srcNode, false);
            await waitForSerial(src, 'VESSEL-TICK-READY', BOOT_TIMEOUT_MS);
            return { ...kind, ping: NaN, tcp: NaN, transferMs: NaN, failed: e.message };
          }),
        );
        if (!(tls ? rawTlsRounds : rawRounds).at(-1)!.failed) {
          await terminate(src, { graceMs: 2000 }).catch(() => undefined);
          src = dst;
          srcNode = dstNode;
        }
        console.log(
          `raw ${over} round ${i}${pc ? ' (post-copy)' : ''}${preempt ? ' (preempt)' : ''}: ${JSON.stringify((tls ? rawTlsRounds : rawRounds).at(-1))}`,
        );
      }
    }

    // The kinds the rounds were (one, or with BENCH_MIG_POSTCOPY=ab both), each figure per kind.
    // With BENCH_MIG_PREEMPT the Vessel / raw figures compare against the raw rounds without it (as Vessel runs).
    const kinds = AB
      ? [
          { label: ' [stop-and-copy]', postcopy: false },
          { label: ' [post-copy from the paused source]', postcopy: true },
        ]
      : [{ label: POSTCOPY ? ' [post-copy from the paused source]' : '', postcopy: POSTCOPY }];
    const vesselOver = PLAIN ? 'Vessel over plain TCP' : 'Vessel over TLS';
    for (const kind of kinds) {
      const [V, R, T] = [vessel, rawRounds, rawTlsRounds].map((rs) => rs.filter((x) => x.postcopy === kind.postcopy && !x.preempt && !x.failed));
      const n = V.length;
      const fig = (name: string, key: 'ping' | 'tcp' | 'transferMs', goal: string) => {
        const [v, r, t] = [V, R, T].map((rs) => rs.map((x) => x[key]));
        figures.push({
          name: `${name}${kind.label}, Vessel / raw QEMU (median of ${n})`,
          ratio: median(v) / median(r),
          detail: `Vessel ${v.map(ms).join(', ')}; raw ${r.map(ms).join(', ')}; raw over TLS ${t.map(ms).join(', ')} (Vessel / raw TLS ${(median(v) / median(t)).toFixed(2)}x); ${goal} [${loadLine()}]`,
        });
      };
      const mib = (rs: Round[]) => rs.map((x) => (x.bytes === undefined ? '?' : (x.bytes / 2 ** 20).toFixed(0))).join(', ');
      figures.push({
        name: `MiB sent${kind.label}, Vessel / raw QEMU (median)`,
        ratio: median(V.map((x) => x.bytes ?? NaN)) / median(R.map((x) => x.bytes ?? NaN)),
        detail: `Vessel ${mib(V)}; raw ${mib(R)}; raw over TLS ${mib(T)}`,
      });
      // The pause taken apart: each segment's median, Vessel / raw plain, with raw TLS beside it.
      const segs = (rs: Round[], k: keyof PauseSegments) => rs.map((x) => x.seg?.[k] ?? NaN).filter(Number.isFinite);
      for (const [k, what] of kind.postcopy ? POSTCOPY_SEGMENTS : SEGMENTS) {
        const [v, r, t] = [segs(V, k), segs(R, k), segs(T, k)];
        figures.push({
          name: `pause${kind.label}: ${what}, Vessel / raw QEMU (median)`,
          ratio: median(v) / median(r),
          detail: `Vessel ${v.map(ms).join(', ')}; raw ${r.map(ms).join(', ')}; raw over TLS ${t.map(ms).join(', ')} (Vessel / raw TLS ${(median(v) / median(t)).toFixed(2)}x)`,
        });
      }
      fig('longest ping gap (20 ms pings)', 'ping', 'goal ≤ 1.2x and ≤ 50 ms more than the ping interval');
      fig('longest TCP stall (a line every 20 ms)', 'tcp', 'goal ≤ 1.2x');
      fig(
        `transfer time${kind.postcopy ? ' (post-copy: until all pages arrived)' : ''} (Vessel: migrationState start → end; raw: migrate → completed)`,
        'transferMs',
        `${vesselOver}, raw plain TCP and over TLS`,
      );
    }
    if (PREEMPT) figures.push(...preemptFigures(rawRounds, 'plain', problems), ...preemptFigures(rawTlsRounds, 'TLS', problems));
  } catch (e) {
    problems.push(e instanceof Error ? e.message : String(e));
  } finally {
    for (const d of rawDirs) await terminate(d, { graceMs: 2000 }).catch(() => undefined);
    await raw?.destroy().catch((e: Error) => problems.push(`removing the baseline's namespaces: ${e.message}`));
    if (c) {
      await c.client.delete(VM, NAME, { namespace: NS }).catch(() => undefined);
      await pollUntil('the VMI gone', async () => ((await c!.client.list(VMI, { namespace: NS })).items.length === 0 ? true : undefined), 120_000).catch(
        (e: Error) => problems.push(e.message),
      );
      await c.close();
    }
    await rm(dir, { recursive: true, force: true });
  }
  return { bench: 'migration', figures, problems, seconds: (now() - started) / 1000 };
}

if (isMain(import.meta.url)) {
  const r = await runMigrationGap();
  printResult(r);
  process.exit(r.problems.length > 0 ? 1 : 0);
}
