/**
 * Starts a throwaway single-member etcd for tests and benchmarks: loopback only, free ports,
 * a temporary data directory, removed again by stop() (or when this process exits).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface EtcdServer {
  /** Client URLs, e.g. ['http://127.0.0.1:40123']. */
  endpoints: string[];
  dataDir: string;
  /** Kills etcd and removes its data directory. Idempotent. */
  stop(): Promise<void>;
  /** Stops etcd and starts it again on the same ports and data (to test reconnects). */
  restart(): Promise<void>;
}

export interface StartEtcdOptions {
  /** Default /usr/bin/etcd (Debian's etcd-server package). */
  binary?: string;
  /** How long to wait for etcd to become healthy (ms). Default 20000. */
  startTimeoutMs?: number;
}

const DEFAULT_BINARY = '/usr/bin/etcd';

/** A port that was free a moment ago (etcd binds it right after; a clash makes us retry). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export async function startEtcd(options: StartEtcdOptions = {}): Promise<EtcdServer> {
  const binary = options.binary ?? DEFAULT_BINARY;
  if (!existsSync(binary)) {
    throw new Error(`etcd not found at ${binary}: install it with \`apt-get install etcd-server\``);
  }
  let lastError: Error | undefined;
  // Ports are picked before etcd binds them, so another process may grab one in between.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(binary, options.startTimeoutMs ?? 20000);
    } catch (err) {
      lastError = err as Error;
    }
  }
  throw lastError;
}

async function startOnce(binary: string, timeoutMs: number): Promise<EtcdServer> {
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const dataDir = mkdtempSync(join(tmpdir(), 'vessel-etcd-'));
  const name = `vessel-test-${process.pid}-${clientPort}`;
  const clientUrl = `http://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const args = [
    `--name=${name}`,
    `--data-dir=${dataDir}`,
    `--listen-client-urls=${clientUrl}`,
    `--advertise-client-urls=${clientUrl}`,
    `--listen-peer-urls=${peerUrl}`,
    `--initial-advertise-peer-urls=${peerUrl}`,
    `--initial-cluster=${name}=${peerUrl}`,
    `--initial-cluster-token=${name}`,
    '--initial-cluster-state=new',
    '--logger=zap',
    '--log-outputs=stderr',
  ];
  // Leave out ETCD_* variables from the caller's environment: etcd reads them as flags.
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ETCD_')) env[k] = v;
  if (process.arch === 'arm64') env.ETCD_UNSUPPORTED_ARCH = 'arm64';

  let proc: EtcdProcess | undefined;
  // If the test process dies without calling stop(), don't leave etcd or its files behind.
  const onExit = () => {
    proc?.child.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  };
  process.on('exit', onExit);

  const launch = async () => {
    proc = spawnEtcd(binary, args, env);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (proc.exited) throw new Error(`etcd exited during startup (code ${proc.child.exitCode}):\n${proc.stderr()}`);
      try {
        const res = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
        const body = (await res.json()) as { health?: string };
        if (res.ok && body.health === 'true') return;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error(`etcd did not become healthy within ${timeoutMs} ms:\n${proc.stderr()}`);
  };

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    process.off('exit', onExit);
    await proc?.kill();
    rmSync(dataDir, { recursive: true, force: true });
  };
  const restart = async () => {
    if (stopped) throw new Error('etcd was stopped');
    await proc?.kill();
    await launch();
  };

  try {
    await launch();
  } catch (err) {
    await stop();
    throw err;
  }
  return { endpoints: [clientUrl], dataDir, stop, restart };
}

interface EtcdProcess {
  child: ChildProcess;
  readonly exited: boolean;
  stderr(): string;
  /** SIGTERM, then SIGKILL after 3 s; resolves once it has exited. */
  kill(): Promise<void>;
}

function spawnEtcd(binary: string, args: string[], env: NodeJS.ProcessEnv): EtcdProcess {
  const child = spawn(binary, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-8000); // keep the tail for error messages
  });
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) => {
    const done = () => {
      exited = true;
      resolve();
    };
    child.once('exit', done);
    child.once('error', done);
  });
  return {
    child,
    get exited() {
      return exited;
    },
    stderr: () => stderr,
    kill: async () => {
      if (exited) return;
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exitedPromise;
      clearTimeout(killer);
    },
  };
}
