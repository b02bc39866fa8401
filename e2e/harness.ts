/**
 * Starts a real Vessel control plane (API server + controllers) in a temporary data
 * directory for a test, and tears it down. Store: SQLite by default, or a given etcd.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RunningServer } from '@vessel/apiserver';
import assert from 'node:assert/strict';
import { Client, StatusError } from '@vessel/client';
import type { RunningControllers } from '@vessel/controllers';
import type { QemuPriority, RunningAgent, SystemReserved } from '@vessel/agent';
import { startControlPlane } from '../packages/cli/control-plane.ts';
import { startDevNodes, type DevNodes } from '../packages/cli/dev-cluster.ts';
import type { StoreConfig } from '@vessel/store';
import type { KubeObject } from '@vessel/client';

export interface Vessel {
  dataDir: string;
  server: RunningServer;
  client: Client;
  controllers?: RunningControllers;
  /** The node agent, when started with `agent`. */
  agent?: RunningAgent;
  kubeconfig: string;
  /** Stops the server and controllers but keeps the data directory (for restart tests). */
  stop(): Promise<void>;
  /** stop() and remove the data directory. */
  close(): Promise<void>;
}

export interface VesselOptions {
  dataDir?: string;
  store?: StoreConfig;
  listen?: string;
  controllers?: boolean;
  bookmarkIntervalMs?: number;
  compactIntervalMs?: number;
  leaseMs?: number;
  nodeGracePeriodMs?: number;
  /** The VM network IPAM allocates from (default 10.244.0.0/16). */
  vmNetworkCidr?: string;
  /** Directories `ova` Providers may read. */
  ovaRoots?: readonly string[];
  /** Forklift: VMs of one migration at once; the registered hook scripts' directory. */
  forkliftMaxInFlight?: number;
  forkliftHookDir?: string;
  /** Forklift: time between a warm migration's precopy rounds (default 60 min). */
  forkliftPrecopyIntervalMs?: number;
  /**
   * Run a node agent in the process too (storage and, later, VMs): its node name.
   * allowLoopbackImports: tests that import from their loopback http servers or registries.
   */
  agent?: {
    nodeName: string;
    sharedDir?: string;
    allowLoopbackImports?: boolean;
    qemuPriority?: QemuPriority;
    reservedCpus?: string;
    systemReserved?: SystemReserved;
  };
}

export async function startVessel(opts: VesselOptions = {}): Promise<Vessel> {
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), 'vessel-test-')));
  const cp = await startControlPlane({
    dataDir,
    listen: opts.listen ?? '127.0.0.1:0',
    store: opts.store,
    controllers: opts.controllers,
    bookmarkIntervalMs: opts.bookmarkIntervalMs,
    compactIntervalMs: opts.compactIntervalMs,
    leaseMs: opts.leaseMs,
    nodeGracePeriodMs: opts.nodeGracePeriodMs,
    vmNetworkCidr: opts.vmNetworkCidr,
    ovaRoots: opts.ovaRoots,
    forkliftMaxInFlight: opts.forkliftMaxInFlight,
    forkliftHookDir: opts.forkliftHookDir,
    forkliftPrecopyIntervalMs: opts.forkliftPrecopyIntervalMs,
    agent: opts.agent,
    log: process.env.VESSEL_TEST_LOG ? (l) => console.error(l) : undefined,
  });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await cp.close();
  };
  return {
    dataDir,
    server: cp.server,
    client: cp.client,
    controllers: cp.controllers,
    agent: cp.agent,
    kubeconfig: cp.server.kubeconfigPath,
    stop,
    async close() {
      await stop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** A control plane and N in-process agents, each in its node's network namespace (packages/cli/dev-cluster.ts). */
export interface TestCluster extends Vessel {
  nodes: DevNodes;
}

/**
 * One control plane (no agent of its own) and `nodes` agents on a dev cluster: a namespace per
 * node on one fabric, the shared pool shared by all, a local pool per agent. close() removes
 * the namespaces even when something failed.
 */
export async function startCluster(
  opts: {
    nodes: number;
    nncpProbeTimeoutMs?: number;
    qemuPriority?: QemuPriority;
    reservedCpus?: readonly (string | undefined)[];
    /** The agents may pull from the test's loopback registries (containerDisks, imports). */
    allowLoopbackImports?: boolean;
    /** Gets every agent log line (`[node-N] ...`), also without VESSEL_TEST_LOG: a failure's report can quote them. */
    nodeLog?: (line: string) => void;
  } & Omit<VesselOptions, 'agent'>,
): Promise<TestCluster> {
  const v = await startVessel(opts);
  let nodes: DevNodes;
  try {
    nodes = await startDevNodes({
      kubeconfig: v.kubeconfig,
      dataDir: v.dataDir,
      nodes: opts.nodes,
      nncpProbeTimeoutMs: opts.nncpProbeTimeoutMs,
      qemuPriority: opts.qemuPriority,
      reservedCpus: opts.reservedCpus,
      allowLoopbackImports: opts.allowLoopbackImports,
      log:
        opts.nodeLog || process.env.VESSEL_TEST_LOG
          ? (l) => {
              opts.nodeLog?.(l);
              if (process.env.VESSEL_TEST_LOG) console.error(l);
            }
          : undefined,
    });
  } catch (e) {
    await v.close();
    throw e;
  }
  return {
    ...v,
    nodes,
    async stop() {
      try {
        await nodes.close();
      } finally {
        await v.stop();
      }
    },
    async close() {
      try {
        await nodes.close();
      } finally {
        await v.close();
      }
    },
  };
}

/** A control plane with a node agent in a child process (e2e/control-plane-child.ts), for tests that kill it. */
export interface ChildControlPlane {
  client: Client;
  process: ChildProcess;
  /** Resolves with the exit code when the child ends (by itself, at a crash point, or killed). */
  exited: Promise<number | null>;
  /** SIGKILL, as a power cut; resolves once it is gone. */
  kill(): Promise<void>;
}

/** Starts the child on `dataDir` (again after a kill: it picks up where it was). `env` adds to this process's. */
export async function startChildControlPlane(dataDir: string, env: NodeJS.ProcessEnv = {}): Promise<ChildControlPlane> {
  const p = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'control-plane-child.ts'), dataDir, '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, ...env },
  });
  const exited = new Promise<number | null>((resolve) => p.on('exit', (code) => resolve(code)));
  const kubeconfig = await new Promise<string>((resolve, reject) => {
    let out = '';
    p.stdout!.on('data', (d) => {
      out += d;
      const m = /READY (\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    void exited.then((code) => reject(new Error(`control plane child exited with ${code} before it was ready`)));
  });
  const client = Client.fromKubeconfig({ explicit: kubeconfig });
  return {
    client,
    process: p,
    exited,
    async kill() {
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
      await exited;
      client.close();
    },
  };
}

export interface RunResult {
  code: number | null;
  out: string;
  err: string;
}

/**
 * Runs a command without blocking the event loop (the server under test lives in this
 * process, so spawnSync would stall it) and collects its output.
 */
export function run(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env });
    let out = '',
      err = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', (d) => {
      err += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
    // A command that exits without reading its input must not fail the test with EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

/**
 * Cuts TCP between network namespace `netns` (a dev cluster node's) and `ip`: every TCP packet to
 * or from it dropped there, so a connection neither delivers nor fails (a cut link, as for a
 * migration stream; UDP such as the VM network's VXLAN still passes). Returns the restore.
 */
export async function cutTcp(netns: string, ip: string): Promise<() => Promise<void>> {
  const table = 'vessel_test_cut';
  const r = await run('ip', ['netns', 'exec', netns, 'nft', '-f', '-'], {
    input:
      `table inet ${table} {\n chain out { type filter hook output priority 0; ip daddr ${ip} meta l4proto tcp drop; }\n` +
      ` chain in { type filter hook input priority 0; ip saddr ${ip} meta l4proto tcp drop; }\n}\n`,
  });
  if (r.code !== 0) throw new Error(`cutting TCP to ${ip} in ${netns}: ${r.err}`);
  let restored = false;
  return async () => {
    if (restored) return;
    restored = true;
    await run('ip', ['netns', 'exec', netns, 'nft', 'delete', 'table', 'inet', table]);
  };
}

/** Polls `check` every `everyMs` until it returns a value (not undefined), or fails with `what` after timeoutMs. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 30_000, everyMs = 150): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last instanceof Error ? last.message : last}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A minimal valid VirtualMachine (Halted, 64Mi). */
export function vm(name: string, labels: Record<string, string> = {}): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, labels },
    spec: { runStrategy: 'Halted', template: { spec: { domain: { devices: {}, resources: { requests: { memory: '64Mi' } } } } } },
  };
}

/** Awaits `p`, which must fail with a Kubernetes Status of HTTP `code` (and a message matching `match`). */
export async function rejects(p: Promise<unknown>, code: number, match?: RegExp): Promise<StatusError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof StatusError, `expected a Status error, got ${e}`);
    assert.equal(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    if (match) assert.match(e.message, match);
    return e;
  }
  assert.fail(`expected HTTP ${code}, but the request succeeded`);
}

/** kubectl on this machine; without it the kubectl suites skip locally and fail in CI (which must have it). */
export const KUBECTL_SKIP: string | false =
  spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' }).status === 0 || process.env.CI ? false : 'kubectl is not installed';

/** Runs kubectl against the Vessel `v()` returns (a getter: suites start theirs in before()); `ok` asserts success and returns stdout. */
export function kubectlFor(v: () => Vessel) {
  const kubectl = (args: string[], input?: string) => run('kubectl', ['--kubeconfig', v().kubeconfig, ...args], { input });
  const ok = async (args: string[], input?: string) => {
    const r = await kubectl(args, input);
    assert.equal(r.code, 0, `kubectl ${args.join(' ')} failed: ${r.err}`);
    return r.out;
  };
  return { kubectl, ok };
}
