/**
 * CRUD benchmark: creates N VirtualMachines through the API server over HTTPS (bounded
 * concurrency), GETs a sample of them, LISTs them all in one request and in pages of 500,
 * for each store (SQLite, etcd). Baseline, same run and same backend: the same writes and
 * reads made directly on a Store (a separate SQLite file / another key prefix in the same
 * etcd). Figures are API / raw-store ratios, with the raw numbers alongside.
 *
 *   node --import tsx bench/crud.bench.ts
 *   env: BENCH_VMS (10000), BENCH_ETCD_VMS (= BENCH_VMS), BENCH_GETS (2000),
 *        BENCH_CONCURRENCY (8), BENCH_STORES (sqlite,etcd), BENCH_PHASE_TIMEOUT_S (120)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findByResource } from '@vessel/api';
import type { KubeList, KubeObject } from '@vessel/client';
import { EtcdStore, SqliteStore, type Store } from '@vessel/store';
import { startVessel, vm, type Vessel } from '../e2e/harness.ts';
import { startEtcd, type EtcdServer } from '../packages/store/testing/etcd-server.ts';
import { checkPool, envInt, errText, isMain, ms, now, printResult, ratio, runPool, stats, type BenchResult, type Figure, type PoolResult } from './lib.ts';

const VMS = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const NAMESPACE = 'default';
const WARM_NAMESPACE = 'bench-warmup';
const WARMUP = 200;
const PAGE = 500;
const LIST_REPEAT = 3;
/** Where the API server keeps VMs of the namespace (objects.ts's layout); the raw baseline uses the same keys. */
const PREFIX = `/registry/kubevirt.io/virtualmachines/${NAMESPACE}/`;

type StoreKind = 'sqlite' | 'etcd';

const vmName = (i: number) => `vm-${String(i).padStart(6, '0')}`;

/** `count` distinct indexes out of 0..n-1, spread over the range (a fixed-seed shuffle). */
function sample(n: number, count: number): number[] {
  const idx = Array.from({ length: n }, (_, i) => i);
  let seed = 12345;
  for (let i = idx.length - 1; i > 0; i--) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    const j = seed % (i + 1);
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx.slice(0, Math.min(count, n));
}

interface Timed<T> {
  value: T;
  ms: number;
}
async function timed<T>(fn: () => Promise<T>): Promise<Timed<T>> {
  const t0 = now();
  const value = await fn();
  return { value, ms: now() - t0 };
}

/** The median of `LIST_REPEAT` runs of fn (each one request / one store call). */
async function medianOf<T>(fn: () => Promise<T>): Promise<Timed<T>> {
  const runs: Timed<T>[] = [];
  for (let i = 0; i < LIST_REPEAT; i++) runs.push(await timed(fn));
  runs.sort((a, b) => a.ms - b.ms);
  return runs[Math.floor(runs.length / 2)];
}

interface Setup {
  vessel: Vessel;
  raw: Store;
  cleanup: () => Promise<void>;
}

async function setUp(kind: StoreKind): Promise<Setup> {
  const dirs: string[] = [];
  let etcd: EtcdServer | undefined;
  let vessel: Vessel | undefined;
  let raw: Store | undefined;
  const cleanup = async () => {
    await vessel?.close().catch(() => undefined);
    await raw?.close().catch(() => undefined);
    await etcd?.stop().catch(() => undefined);
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  };
  try {
    if (kind === 'sqlite') {
      vessel = await startVessel({ controllers: false });
      const dir = await mkdtemp(join(tmpdir(), 'vessel-bench-raw-'));
      dirs.push(dir);
      raw = new SqliteStore(join(dir, 'raw.db'));
    } else {
      etcd = await startEtcd();
      vessel = await startVessel({ controllers: false, store: { kind: 'etcd', endpoints: etcd.endpoints, prefix: '/vessel' } });
      raw = new EtcdStore({ endpoints: etcd.endpoints, prefix: '/bench-raw' });
    }
    return { vessel, raw, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** The JSON the API server stores for a VM (taken from a real create), with the name left open. */
async function storedTemplate(v: Vessel): Promise<(name: string) => string> {
  const created = await v.client.create(VMS, vm('template'), { namespace: WARM_NAMESPACE });
  const { resourceVersion: _rv, ...metadata } = created.metadata ?? {};
  const json = JSON.stringify({ ...created, metadata: { ...metadata, name: '@NAME@', namespace: NAMESPACE } });
  const [head, tail] = json.split('"@NAME@"');
  return (name) => `${head}${JSON.stringify(name)}${tail}`;
}

/** One store's run: returns its figures. */
async function benchStore(kind: StoreKind, n: number, gets: number, concurrency: number, deadlineMs: number, problems: string[]): Promise<Figure[]> {
  const label = kind === 'sqlite' ? 'SQLite' : 'etcd';
  const log = (s: string) => console.log(`  [crud ${label}] ${s}`);
  const { vessel, raw, cleanup } = await setUp(kind);
  try {
    const client = vessel.client;
    await client.create(findByResource('', 'v1', 'namespaces')!, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: WARM_NAMESPACE } });
    const valueOf = await storedTemplate(vessel);

    // Warm-up (JIT, connections, SQLite page cache), outside the measured keys.
    await runPool(WARMUP, concurrency, deadlineMs, (i) => client.create(VMS, vm(`warm-${i}`), { namespace: WARM_NAMESPACE }));
    await runPool(WARMUP, concurrency, deadlineMs, (i) => client.get(VMS, `warm-${i}`, { namespace: WARM_NAMESPACE }));
    await runPool(WARMUP, concurrency, deadlineMs, (i) => raw.create(`/warm/${vmName(i)}`, valueOf(vmName(i))));
    await runPool(WARMUP, concurrency, deadlineMs, (i) => raw.get(`/warm/${vmName(i)}`));

    // Creates: raw store, then API.
    log(`creating ${n} keys in the raw store (concurrency ${concurrency})`);
    const rawCreate = await runPool(n, concurrency, deadlineMs, (i) => raw.create(PREFIX + vmName(i), valueOf(vmName(i))));
    checkPool(`${label} raw create`, rawCreate, n, problems);
    log(`creating ${n} VMs through the API`);
    const apiCreate = await runPool(n, concurrency, deadlineMs, (i) => client.create(VMS, vm(vmName(i)), { namespace: NAMESPACE }));
    checkPool(`${label} API create`, apiCreate, n, problems);
    const created = Math.min(rawCreate.completed, apiCreate.completed);

    // Gets of a sample of the keys both sides created (the pools create in index order).
    const idx = sample(created, gets);
    log(`getting ${idx.length} of them (raw, then API)`);
    const rawGet = await runPool(idx.length, concurrency, deadlineMs, async (i) => {
      if (!(await raw.get(PREFIX + vmName(idx[i])))) throw new Error(`raw get ${vmName(idx[i])}: missing`);
    });
    checkPool(`${label} raw get`, rawGet, idx.length, problems);
    const apiGet = await runPool(idx.length, concurrency, deadlineMs, (i) => client.get(VMS, vmName(idx[i]), { namespace: NAMESPACE }));
    checkPool(`${label} API get`, apiGet, idx.length, problems);

    // List everything in one call, then in pages of PAGE. A failing list is reported, and the rest goes on.
    log('listing (all at once, then paged)');
    const attempt = async <T>(what: string, fn: () => Promise<Timed<T>>): Promise<Timed<T> | undefined> => {
      try {
        return await fn();
      } catch (e) {
        problems.push(`${label} ${what} failed: ${errText(e)}`);
        return undefined;
      }
    };
    const count = (what: string, got: number | undefined, expected: number) => {
      if (got !== undefined && got !== expected) problems.push(`${label} ${what}: ${got} items, expected ${expected}`);
    };
    const rawList = await attempt('raw list (all)', () => medianOf(async () => (await raw.list(PREFIX)).items.length));
    count('raw list', rawList?.value, rawCreate.completed);
    const apiList = await attempt('API list (all)', () => medianOf(async () => (await client.list(VMS, { namespace: NAMESPACE })).items.length));
    count('API list', apiList?.value, apiCreate.completed);

    const rawPaged = await attempt('raw paged list', () =>
      timed(async () => {
        let items = 0,
          pages = 0,
          startAfter: string | undefined,
          revision: number | undefined;
        const maxPages = Math.ceil(n / PAGE) + 5,
          t0 = now();
        for (; pages < maxPages && now() - t0 < deadlineMs; pages++) {
          const page = await raw.list(PREFIX, { limit: PAGE, startAfter, revision });
          items += page.items.length;
          revision ??= page.revision;
          if (!page.more || page.items.length === 0) {
            pages++;
            break;
          }
          startAfter = page.items[page.items.length - 1].key;
        }
        return { items, pages };
      }),
    );
    count('raw paged list', rawPaged?.value.items, rawCreate.completed);
    const apiPaged = await attempt('API paged list', () =>
      timed(async () => {
        let items = 0,
          pages = 0,
          cont: string | undefined;
        const maxPages = Math.ceil(n / PAGE) + 5,
          t0 = now();
        for (; pages < maxPages && now() - t0 < deadlineMs; pages++) {
          const page: KubeList<KubeObject> = await client.list(VMS, { namespace: NAMESPACE, limit: PAGE, continue: cont });
          items += page.items.length;
          cont = page.metadata?.continue;
          if (!cont) {
            pages++;
            break;
          }
        }
        return { items, pages };
      }),
    );
    count('API paged list', apiPaged?.value.items, apiCreate.completed);

    const s = (r: PoolResult) => stats(r.latencies);
    const [rc, ac, rg, ag] = [s(rawCreate), s(apiCreate), s(rawGet), s(apiGet)];
    const tput = (r: PoolResult) => (r.completed / r.wallMs) * 1000;
    const lat = (api: ReturnType<typeof s>, rawS: ReturnType<typeof s>) =>
      `API p50 ${ms(api.p50)} p99 ${ms(api.p99)} | raw p50 ${ms(rawS.p50)} p99 ${ms(rawS.p99)} (n=${api.n}/${rawS.n})`;
    const figures: Figure[] = [
      { name: `${label} create p50 (API/raw)`, ratio: ratio(ac.p50, rc.p50), detail: lat(ac, rc) },
      { name: `${label} create p99 (API/raw)`, ratio: ratio(ac.p99, rc.p99), detail: `p99 ratio; max API ${ms(ac.max)} raw ${ms(rc.max)}` },
      {
        name: `${label} create throughput (raw/API)`,
        ratio: ratio(tput(rawCreate), tput(apiCreate)),
        detail: `API ${tput(apiCreate).toFixed(0)}/s (${(apiCreate.wallMs / 1000).toFixed(1)} s) | raw ${tput(rawCreate).toFixed(0)}/s (${(rawCreate.wallMs / 1000).toFixed(1)} s), ${concurrency} in flight`,
      },
      { name: `${label} get p50 (API/raw)`, ratio: ratio(ag.p50, rg.p50), detail: lat(ag, rg) },
      {
        name: `${label} get p99 (API/raw)`,
        ratio: ratio(ag.p99, rg.p99),
        detail: `p99 ratio; API ${tput(apiGet).toFixed(0)}/s raw ${tput(rawGet).toFixed(0)}/s`,
      },
      {
        name: `${label} list all (API/raw)`,
        ratio: ratio(apiList?.ms ?? NaN, rawList?.ms ?? NaN),
        detail: `API ${apiList ? `${ms(apiList.ms)} for ${apiList.value} items` : 'FAILED'} | raw store.list ${rawList ? ms(rawList.ms) : 'FAILED'} (median of ${LIST_REPEAT})`,
      },
      {
        name: `${label} paged list ${PAGE} (API/raw)`,
        ratio: ratio(apiPaged?.ms ?? NaN, rawPaged?.ms ?? NaN),
        detail: `API ${apiPaged ? `${ms(apiPaged.ms)} ${apiPaged.value.pages} pages ${apiPaged.value.items} items` : 'FAILED'} | raw ${rawPaged ? `${ms(rawPaged.ms)} ${rawPaged.value.pages} pages` : 'FAILED'}`,
      },
    ];
    return figures;
  } finally {
    await cleanup();
  }
}

export async function runCrud(): Promise<BenchResult> {
  const started = now();
  const n = envInt('BENCH_VMS', 10000);
  const etcdN = envInt('BENCH_ETCD_VMS', n);
  const gets = envInt('BENCH_GETS', 2000);
  const concurrency = envInt('BENCH_CONCURRENCY', 8);
  const deadlineMs = envInt('BENCH_PHASE_TIMEOUT_S', 120) * 1000;
  const stores = (process.env.BENCH_STORES ?? 'sqlite,etcd')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean) as StoreKind[];
  const figures: Figure[] = [];
  const problems: string[] = [];
  for (const kind of stores) {
    if (kind !== 'sqlite' && kind !== 'etcd') {
      problems.push(`unknown store "${kind}" in BENCH_STORES`);
      continue;
    }
    try {
      figures.push(...(await benchStore(kind, kind === 'etcd' ? etcdN : n, gets, concurrency, deadlineMs, problems)));
    } catch (e) {
      problems.push(`${kind}: ${errText(e)}`);
    }
  }
  return { bench: `crud (VMs: SQLite ${n}, etcd ${etcdN}; concurrency ${concurrency})`, figures, problems, seconds: (now() - started) / 1000 };
}

if (isMain(import.meta.url)) {
  const r = await runCrud();
  printResult(r);
  if (r.problems.length) process.exitCode = 1;
}
