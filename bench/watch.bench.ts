/**
 * Watch fan-out benchmark: W concurrent watch streams (one TCP connection each) on the VMs
 * of a namespace, against an API server running in a child process (bench/server-child.ts),
 * then K patches to one VM ~50 ms apart. For every (watcher, write) pair it records the
 * delay from just before the PATCH is sent to the moment that watcher parses the event
 * (matched by resourceVersion), and checks that every watcher got every event.
 * Baselines, same run: the same K writes seen by ONE watcher, and by a raw store.watch on
 * the same backend (in this process). Figures: p99 with W watchers / p99 with one, etc.
 *
 *   node --import tsx bench/watch.bench.ts
 *   env: BENCH_WATCHERS (1000), BENCH_WRITES (50), BENCH_WRITE_GAP_MS (50),
 *        BENCH_WATCH_STORES (sqlite,etcd), BENCH_SERVER_PROF=DIR
 *        (write the server child's --cpu-prof there)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import type https from 'node:https';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findByResource } from '@vessel/api';
import { Client, type KubeObject, type Watch } from '@vessel/client';
import { EtcdStore, SqliteStore, type Store } from '@vessel/store';
import { vm } from '../e2e/harness.ts';
import { startEtcd, type EtcdServer } from '../packages/store/testing/etcd-server.ts';
import { envInt, errText, isMain, ms, now, printResult, ratio, sleep, stats, within, type BenchResult, type Figure, type Stats } from './lib.ts';

const VMS = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const NAMESPACE = 'default';
const TARGET = 'watched';
const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** Watches opened per batch while connecting (keeps the server's accept backlog small). */
const CONNECT_BATCH = 100;
const CONNECT_TIMEOUT_MS = 90_000;
const DRAIN_TIMEOUT_MS = 30_000;

type StoreKind = 'sqlite' | 'etcd';

interface ChildServer {
  kubeconfig: string;
  url: string;
  port: number;
  stop(): Promise<void>;
}

/** Starts bench/server-child.ts and waits for the line that says it serves. */
async function startChild(dataDir: string, kind: StoreKind, etcdEndpoint?: string): Promise<ChildServer> {
  const prof = process.env.BENCH_SERVER_PROF;
  const profArgs = prof ? ['--cpu-prof', `--cpu-prof-dir=${resolve(prof)}`] : [];
  if (prof) await mkdir(prof, { recursive: true });
  const args = ['--import', 'tsx', ...profArgs, join(ROOT, 'bench/server-child.ts'), dataDir, kind, ...(etcdEndpoint ? [etcdEndpoint] : [])];
  const child: ChildProcess = spawn(process.execPath, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  const killOnExit = () => child.kill('SIGKILL');
  process.on('exit', killOnExit);
  const stop = async () => {
    process.off('exit', killOnExit);
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 8000);
    await exited;
    clearTimeout(timer);
  };
  try {
    const line = await within(
      new Promise<string>((res, rej) => {
        let buf = '';
        child.stdout!.setEncoding('utf8');
        child.stdout!.on('data', (d: string) => {
          buf += d;
          const nl = buf.indexOf('\n');
          if (nl >= 0) res(buf.slice(0, nl));
        });
        child.once('exit', (code) => rej(new Error(`server child exited (code ${code}) before serving`)));
      }),
      30_000,
      'server child start',
    );
    const info = JSON.parse(line) as { kubeconfig: string; url: string };
    return { kubeconfig: info.kubeconfig, url: info.url, port: Number(new URL(info.url).port), stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** Established TCP connections to 127.0.0.1:port seen by the kernel (client side), from /proc/net/tcp. */
function establishedTo(port: number): number {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  let count = 0;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > 3 && f[2] === `0100007F:${hexPort}` && f[3] === '01') count++;
  }
  return count;
}

function agentOf(client: Client): https.Agent {
  return (client as unknown as { agent: https.Agent }).agent;
}

/** Sockets of a Client's agent: in use (and, with idle, also kept-alive idle ones). */
function socketsOf(client: Client, idle = false): number {
  const agent = agentOf(client);
  const count = (m: NodeJS.ReadOnlyDict<unknown[]>) => Object.values(m).reduce((n, list) => n + (list?.length ?? 0), 0);
  return count(agent.sockets) + (idle ? count(agent.freeSockets) : 0);
}

interface Watcher {
  arrivals: Map<string, number>;
  watch: Watch;
  error?: string;
}

interface WriteRecord {
  rv: string;
  sent: number;
  answered: number;
}

interface PhaseResult {
  watchers: number;
  /** Delay (ms) from just before each PATCH was sent to each watcher's receipt. */
  delays: Stats;
  /** The same, from the PATCH's response (can be negative: events may beat the response). */
  fromResponse: Stats;
  /** Per write, the time until the LAST watcher had it (ms). */
  lastArrival: Stats;
  write: Stats;
  missing: number;
  pairs: number;
  connectMs: number;
  connections: { agentSockets: number; kernel: number };
}

/** One phase: `count` watches from the current resourceVersion, K writes, delays. */
async function watchPhase(
  kubeconfig: string,
  port: number,
  writer: Client,
  count: number,
  writes: number,
  gapMs: number,
  problems: string[],
  label: string,
): Promise<PhaseResult> {
  const log = (s: string) => console.log(`  [watch ${label}] ${s}`);
  // Client.watch uses the Client's keep-alive agent. With maxSockets finite, a Client could
  // queue watches behind each other on shared sockets; then give each group its own Client.
  const probe = Client.fromKubeconfig({ explicit: kubeconfig });
  const maxSockets = agentOf(probe).maxSockets;
  const perClient = Number.isFinite(maxSockets) ? Math.max(1, maxSockets) : count;
  const clients: Client[] = [probe];
  while (clients.length * perClient < count) clients.push(Client.fromKubeconfig({ explicit: kubeconfig }));
  if (count > 1) log(`agent maxSockets=${maxSockets}: ${clients.length} client(s) for ${count} watches`);

  const start = await writer.list(VMS, { namespace: NAMESPACE, limit: 1 });
  const fromRv = start.metadata?.resourceVersion ?? '0';
  const watchers: Watcher[] = [];
  const t0 = now();
  try {
    for (let i = 0; i < count; i++) {
      const w: Watcher = { arrivals: new Map(), watch: undefined as unknown as Watch };
      w.watch = clients[Math.floor(i / perClient)].watchResource(VMS, { namespace: NAMESPACE, resourceVersion: fromRv }, (ev) => {
        const at = now();
        if (ev.type === 'ERROR') {
          w.error ??= JSON.stringify(ev.object).slice(0, 200);
          return;
        }
        const o = ev.object as KubeObject;
        if (o.metadata?.name === TARGET && o.metadata.resourceVersion) w.arrivals.set(o.metadata.resourceVersion, at);
      });
      w.watch.done.catch((e: unknown) => {
        w.error ??= errText(e);
      });
      watchers.push(w);
      if ((i + 1) % CONNECT_BATCH === 0) await sleep(10);
    }
    // A sync write: once every watcher has it, every stream is connected and live.
    const sync = await writer.patch(VMS, TARGET, { metadata: { labels: { sync: String(Date.now()) } } }, { namespace: NAMESPACE });
    const syncRv = sync.metadata!.resourceVersion!;
    const live = () => watchers.filter((w) => w.arrivals.has(syncRv)).length;
    while (live() < count && now() - t0 < CONNECT_TIMEOUT_MS && !watchers.some((w) => w.error)) await sleep(20);
    const connectMs = now() - t0;
    const connections = { agentSockets: clients.reduce((n, c) => n + socketsOf(c), 0), kernel: establishedTo(port) - socketsOf(writer, true) };
    log(
      `${live()}/${count} watches live after ${ms(connectMs)}; ${connections.agentSockets} agent sockets, ${connections.kernel} TCP connections (excluding the writer's)`,
    );
    if (live() < count) problems.push(`${label}: only ${live()} of ${count} watches were live after ${ms(connectMs)}`);
    if (connections.agentSockets !== count) problems.push(`${label}: ${count} watches use ${connections.agentSockets} sockets, expected one each`);

    // The measured writes, ~gapMs apart.
    const records: WriteRecord[] = [];
    const writeStart = now();
    for (let k = 0; k < writes && now() - writeStart < writes * gapMs + 60_000; k++) {
      const sent = now();
      const res = await writer.patch(VMS, TARGET, { metadata: { labels: { seq: String(k) } } }, { namespace: NAMESPACE });
      const answered = now();
      records.push({ rv: res.metadata!.resourceVersion!, sent, answered });
      const wait = sent + gapMs - now();
      if (wait > 0) await sleep(wait);
    }
    if (records.length < writes) problems.push(`${label}: only ${records.length} of ${writes} writes within the time bound`);
    const lastRv = records[records.length - 1]?.rv;
    const drainStart = now();
    while (lastRv && now() - drainStart < DRAIN_TIMEOUT_MS && watchers.some((w) => !w.arrivals.has(lastRv) && !w.error)) await sleep(20);

    const delays: number[] = [],
      fromResponse: number[] = [],
      lastArrival: number[] = [];
    let missing = 0;
    for (const r of records) {
      let latest = -Infinity;
      for (const w of watchers) {
        const at = w.arrivals.get(r.rv);
        if (at === undefined) {
          missing++;
          continue;
        }
        delays.push(at - r.sent);
        fromResponse.push(at - r.answered);
        latest = Math.max(latest, at - r.sent);
      }
      if (latest > -Infinity) lastArrival.push(latest);
    }
    const errored = watchers.filter((w) => w.error);
    if (errored.length) problems.push(`${label}: ${errored.length} watches failed (first: ${errored[0].error})`);
    if (missing) problems.push(`${label}: ${missing} of ${records.length * count} (watcher, event) pairs missing`);
    return {
      watchers: count,
      delays: stats(delays),
      fromResponse: stats(fromResponse),
      lastArrival: stats(lastArrival),
      write: stats(records.map((r) => r.answered - r.sent)),
      missing,
      pairs: records.length * count,
      connectMs,
      connections,
    };
  } finally {
    for (const w of watchers) w.watch.close();
    await Promise.allSettled(watchers.map((w) => w.watch.done));
    for (const c of clients) c.close();
  }
}

/** Baseline: a store.watch in this process on the same backend, same K writes and gap. */
async function rawStorePhase(store: Store, value: (seq: number) => string, writes: number, gapMs: number, problems: string[], label: string): Promise<Stats> {
  const key = `/registry/kubevirt.io/virtualmachines/${NAMESPACE}/${TARGET}`;
  await store.create(key, value(-1));
  const arrivals = new Map<number, number>();
  let failure: string | undefined;
  const watch = store.watch(`/registry/kubevirt.io/virtualmachines/${NAMESPACE}/`, {
    fromRevision: await store.currentRevision(),
    onEvent: (ev) => {
      arrivals.set(ev.kv.modRevision, now());
    },
    onError: (e) => {
      failure = e.message;
    },
  });
  try {
    // Warm-up write so a watch that connects asynchronously (etcd) is live before measuring.
    const warm = await store.update(key, value(-2));
    const t0 = now();
    while (!arrivals.has(warm.modRevision) && now() - t0 < 10_000 && !failure) await sleep(5);
    const records: { rev: number; sent: number }[] = [];
    for (let k = 0; k < writes; k++) {
      const sent = now();
      const kv = await store.update(key, value(k));
      records.push({ rev: kv.modRevision, sent });
      const wait = sent + gapMs - now();
      if (wait > 0) await sleep(wait);
    }
    const last = records[records.length - 1].rev;
    const d0 = now();
    while (!arrivals.has(last) && now() - d0 < DRAIN_TIMEOUT_MS && !failure) await sleep(5);
    if (failure) problems.push(`${label} raw store watch failed: ${failure}`);
    const missing = records.filter((r) => !arrivals.has(r.rev)).length;
    if (missing) problems.push(`${label} raw store watch: ${missing} of ${writes} events missing`);
    return stats(records.filter((r) => arrivals.has(r.rev)).map((r) => arrivals.get(r.rev)! - r.sent));
  } finally {
    watch.close();
  }
}

async function benchStore(kind: StoreKind, watcherCount: number, writes: number, gapMs: number, problems: string[]): Promise<Figure[]> {
  const label = kind === 'sqlite' ? 'SQLite' : 'etcd';
  const dirs: string[] = [];
  let etcd: EtcdServer | undefined, child: ChildServer | undefined, raw: Store | undefined, writer: Client | undefined;
  try {
    const dataDir = await mkdtemp(join(tmpdir(), 'vessel-bench-watch-'));
    dirs.push(dataDir);
    if (kind === 'etcd') {
      etcd = await startEtcd();
      raw = new EtcdStore({ endpoints: etcd.endpoints, prefix: '/bench-raw' });
    } else {
      const rawDir = await mkdtemp(join(tmpdir(), 'vessel-bench-raw-'));
      dirs.push(rawDir);
      raw = new SqliteStore(join(rawDir, 'raw.db'));
    }
    child = await startChild(dataDir, kind, etcd?.endpoints[0]);
    writer = Client.fromKubeconfig({ explicit: child.kubeconfig });
    const created = await writer.create(VMS, vm(TARGET), { namespace: NAMESPACE });
    const { resourceVersion: _rv, ...meta } = created.metadata ?? {};
    const value = (seq: number) => JSON.stringify({ ...created, metadata: { ...meta, labels: { seq: String(seq) } } });

    const rawStats = await rawStorePhase(raw, value, writes, gapMs, problems, label);
    console.log(`  [watch ${label}] raw store.watch: p50 ${ms(rawStats.p50)} p99 ${ms(rawStats.p99)}`);
    const one = await watchPhase(child.kubeconfig, child.port, writer, 1, writes, gapMs, problems, `${label} 1 watcher`);
    console.log(`  [watch ${label}] 1 watcher: p50 ${ms(one.delays.p50)} p99 ${ms(one.delays.p99)} max ${ms(one.delays.max)}`);
    const many = await watchPhase(child.kubeconfig, child.port, writer, watcherCount, writes, gapMs, problems, `${label} ${watcherCount} watchers`);
    console.log(`  [watch ${label}] ${watcherCount} watchers: p50 ${ms(many.delays.p50)} p99 ${ms(many.delays.p99)} max ${ms(many.delays.max)}`);

    const everyone = many.missing === 0 && one.missing === 0 ? 'yes' : 'NO';
    return [
      {
        name: `${label} watch p99, ${watcherCount} vs 1 watcher`,
        ratio: ratio(many.delays.p99, one.delays.p99),
        detail: `${watcherCount} watchers p50 ${ms(many.delays.p50)} p99 ${ms(many.delays.p99)} max ${ms(many.delays.max)} | 1 watcher p50 ${ms(one.delays.p50)} p99 ${ms(one.delays.p99)} max ${ms(one.delays.max)}`,
      },
      {
        name: `${label} watch p50, ${watcherCount} vs 1 watcher`,
        ratio: ratio(many.delays.p50, one.delays.p50),
        detail: `every watcher got every event: ${everyone} (${many.pairs - many.missing}/${many.pairs} pairs; ${writes} writes ${gapMs} ms apart)`,
      },
      {
        name: `${label} watch last-watcher p99, ${watcherCount} vs 1`,
        ratio: ratio(many.lastArrival.p99, one.lastArrival.p99),
        detail: `time until the last of ${watcherCount} had an event: p50 ${ms(many.lastArrival.p50)} p99 ${ms(many.lastArrival.p99)} | from the PATCH response: p50 ${ms(many.fromResponse.p50)} p99 ${ms(many.fromResponse.p99)}`,
      },
      {
        name: `${label} watch 1 watcher vs raw store.watch p99`,
        ratio: ratio(one.delays.p99, rawStats.p99),
        detail: `1 watcher (HTTPS, child process) p50 ${ms(one.delays.p50)} p99 ${ms(one.delays.p99)} | store.watch p50 ${ms(rawStats.p50)} p99 ${ms(rawStats.p99)}`,
      },
      {
        name: `${label} PATCH p50 during fan-out, ${watcherCount} vs 1`,
        ratio: ratio(many.write.p50, one.write.p50),
        detail: `PATCH latency with ${watcherCount} watchers p50 ${ms(many.write.p50)} p99 ${ms(many.write.p99)} | with 1 p50 ${ms(one.write.p50)} p99 ${ms(one.write.p99)}; ${many.connections.agentSockets} sockets / ${many.connections.kernel} TCP conns, connected+live in ${ms(many.connectMs)}`,
      },
    ];
  } finally {
    writer?.close();
    await child?.stop().catch(() => undefined);
    await raw?.close().catch(() => undefined);
    await etcd?.stop().catch(() => undefined);
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  }
}

export async function runWatch(): Promise<BenchResult> {
  const started = now();
  const watchers = envInt('BENCH_WATCHERS', 1000);
  const writes = envInt('BENCH_WRITES', 50);
  const gapMs = envInt('BENCH_WRITE_GAP_MS', 50);
  const stores = (process.env.BENCH_WATCH_STORES ?? 'sqlite,etcd')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean) as StoreKind[];
  const figures: Figure[] = [];
  const problems: string[] = [];
  for (const kind of stores) {
    if (kind !== 'sqlite' && kind !== 'etcd') {
      problems.push(`unknown store "${kind}" in BENCH_WATCH_STORES`);
      continue;
    }
    try {
      figures.push(...(await benchStore(kind, watchers, writes, gapMs, problems)));
    } catch (e) {
      problems.push(`${kind}: ${errText(e)}`);
    }
  }
  return {
    bench: `watch (${watchers} watchers, ${writes} writes ${gapMs} ms apart; server in a child process)`,
    figures,
    problems,
    seconds: (now() - started) / 1000,
  };
}

if (isMain(import.meta.url)) {
  const r = await runWatch();
  printResult(r);
  if (r.problems.length) process.exitCode = 1;
}
