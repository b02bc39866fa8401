/**
 * Self-fencing (as medik8s self-node-remediation): every second the agent checks the API server;
 * while it cannot reach it, it asks its peer agents (the other Nodes' agents, on their
 * endpoint's /v1/healthz, certificate pinned, agent token) whether they reach it. When for the
 * fencing timeout it has reached neither the API server nor a majority that shares the outage
 * (itself and its reachable peers more than half of the nodes, none of them reaching the API
 * server), it kills its QEMUs itself, so the control plane may start their VMs elsewhere
 * once this node's fencing deadline has passed (controllers/node-lifecycle.ts). A node without
 * peers never fences; an API outage every node sees (peers reachable) stops nothing.
 *
 * In the dev cluster the agent runs in the host's namespace but its node is a network namespace:
 * there a small relay inside the namespace (netnsProber) also checks that the fabric path still
 * answers (the outside address standing in for the control plane's side, the peers' fabric
 * addresses), so cutting a node's fabric link cuts it off as a real partition would.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { request as httpsRequest } from 'node:https';
import { createInterface } from 'node:readline';
import { storage, refs } from '@vessel/api';
import type { Client } from '@vessel/client';
import type { KubeObject } from '@vessel/runtime';
import { checkPinned } from '@vessel/tls';
import { inNetns } from './network/exec.ts';

/** The Node annotation with the agent's fencing timeout in seconds (what the control plane waits for). */
export const FENCING_TIMEOUT_ANNOTATION = 'vessel.io/fencing-timeout-seconds';
export const DEFAULT_FENCING_TIMEOUT_MS = 8000;

/** What a peer's check found: its agent did not answer; it answered; it answered and reaches the API server. */
export type PeerAnswer = 'unreachable' | 'reachable' | 'reachesApi';

export interface Peer {
  name: string;
  /** Asks the peer's agent (in the dev cluster, its fabric address first). */
  check(): Promise<PeerAnswer>;
}

export interface FencerDeps {
  /** The API server answers (and, in the dev cluster, the fabric path to it works). */
  apiReachable(): Promise<boolean>;
  /** The peers as last seen (refreshed while the API server answers). */
  peers(): Promise<Peer[]> | Peer[];
  /** Kills this node's QEMUs; resolves with how many. */
  fence(reason: string): Promise<number>;
  /** The API server answers again after a fence: record it (Node condition, event). */
  recovered?(reason: string, at: Date): Promise<void>;
  timeoutMs: number;
  now?: () => number;
  log?: (line: string) => void;
}

/** The fencing decision, one tick at a time (tests drive tick() with their own clock and probes). */
export class Fencer {
  private lastApiOk: number;
  /** Set from the fence until the API server answers again and it is recorded. */
  private fencedFor?: { reason: string; at: Date };
  /** The last API probe's answer: the heartbeat is skipped while it is false. */
  apiOk = true;

  constructor(private readonly deps: FencerDeps) {
    this.lastApiOk = this.now();
  }

  private now(): number {
    return this.deps.now?.() ?? Date.now();
  }

  get fenced(): boolean {
    return this.fencedFor !== undefined;
  }

  /** One check; says what it did (tests). */
  async tick(): Promise<'ok' | 'quorum' | 'waiting' | 'fenced' | 'alone'> {
    this.apiOk = await this.deps.apiReachable().catch(() => false);
    if (this.apiOk) {
      this.lastApiOk = this.now();
      if (this.fencedFor) {
        await this.deps.recovered?.(this.fencedFor.reason, this.fencedFor.at);
        this.fencedFor = undefined;
      }
      return 'ok';
    }
    if (this.fencedFor) return 'fenced';
    const peers = await this.deps.peers();
    if (peers.length === 0) return 'alone';
    const answers = await Promise.all(peers.map((p) => p.check().catch((): PeerAnswer => 'unreachable')));
    const reached = answers.filter((a) => a !== 'unreachable').length;
    // A peer that reaches the API server: the control plane is up and sees this node silent, so
    // it will restart its VMs elsewhere: fence. Otherwise a majority that shares the outage
    // (this node and the peers it reaches) keeps running: the control plane fails a node over
    // only while at least half the nodes post (node-lifecycle.ts), which such a majority denies.
    const apiSeen = answers.includes('reachesApi');
    if (!apiSeen && (reached + 1) * 2 > peers.length + 1) return 'quorum';
    const silentMs = this.now() - this.lastApiOk;
    if (silentMs < this.deps.timeoutMs) return 'waiting';
    const reason = `no API server and ${reached} of ${peers.length} peer agents reachable${apiSeen ? ' (one of them reaches the API server)' : ''} for ${Math.round(silentMs / 1000)}s (fencing timeout ${this.deps.timeoutMs / 1000}s)`;
    const at = new Date(this.now());
    this.fencedFor = { reason, at };
    const n = await this.deps.fence(reason);
    this.deps.log?.(`fencing: ${reason}: killed ${n} QEMU${n === 1 ? '' : 's'} of this node`);
    return 'fenced';
  }
}

/** Runs fencer.tick() every `everyMs` until stop(); `afterTick` after each (the watchdog's pet). */
export function runFencer(fencer: Fencer, everyMs: number, log?: (line: string) => void, afterTick?: () => Promise<void>): { stop(): void } {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const loop = async () => {
    await fencer.tick().catch((e: unknown) => log?.(`fencing: check failed: ${e instanceof Error ? e.message : e}`));
    await afterTick?.().catch((e: unknown) => log?.(`watchdog: pet failed: ${e instanceof Error ? e.message : e}`));
    if (!stopped) timer = setTimeout(() => void loop(), everyMs).unref();
  };
  timer = setTimeout(() => void loop(), everyMs).unref();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/** Resolves with `p`'s value, or `fallback` after `ms`. */
export function within<T>(p: Promise<T>, ms: number, fallback: T): Promise<T> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(fallback), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      () => {
        clearTimeout(t);
        resolve(fallback);
      },
    );
  });
}

/** GET /v1/healthz on a peer's agent endpoint (from its Node: address, port, pinned certificate). */
export function askPeer(node: KubeObject, token: string, timeoutMs: number): Promise<PeerAnswer> {
  const status = (node.status ?? {}) as { addresses?: { type: string; address: string }[]; daemonEndpoints?: { kubeletEndpoint?: { Port?: number } } };
  const host = status.addresses?.find((a) => a.type === 'InternalIP')?.address;
  const port = status.daemonEndpoints?.kubeletEndpoint?.Port;
  const fp = node.metadata.annotations?.[storage.NODE_CERT_SHA256];
  const ca = node.metadata.annotations?.[storage.NODE_CERT];
  if (!host || !port || !fp || !ca) return Promise.resolve('unreachable');
  return new Promise((resolve) => {
    const req = httpsRequest(
      {
        host,
        port,
        path: '/v1/healthz',
        headers: { Authorization: `Bearer ${token}` },
        ca,
        rejectUnauthorized: true,
        checkServerIdentity: checkPinned(fp, () => new Error('certificate mismatch')),
        agent: false,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => {
          if (res.statusCode !== 200) return resolve('unreachable');
          const answer = (() => {
            try {
              return JSON.parse(body) as { apiReachable?: boolean };
            } catch {
              return {};
            }
          })();
          resolve(answer.apiReachable ? 'reachesApi' : 'reachable');
        });
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy());
    req.on('error', () => resolve('unreachable'));
    req.end();
  });
}

/** The peers: the other Nodes whose agents fence (they publish their timeout), from the last list. */
export function peerNodes(nodes: KubeObject[], self: string): KubeObject[] {
  return nodes.filter((n) => n.metadata.name !== self && n.metadata.annotations?.[FENCING_TIMEOUT_ANNOTATION] !== undefined);
}

/** Lists the Nodes (for peerNodes) within `ms`; undefined when the API server does not answer. */
export async function listNodes(client: Client, ms: number): Promise<KubeObject[] | undefined> {
  return within(
    client.list(refs.NODES).then((l) => l.items as KubeObject[]),
    ms,
    undefined,
  );
}

// The relay inside a node's namespace: reads `id host port timeoutMs` lines, answers `id ok` when
// the host answered (a connection, or a refusal: either way the path works), else `id fail`.
const PROBER = `
const net = require('node:net');
require('node:readline').createInterface({ input: process.stdin }).on('line', (l) => {
  const [id, host, port, ms] = l.split(' ');
  let done = false;
  const end = (ok) => { if (done) return; done = true; s.destroy(); process.stdout.write(id + (ok ? ' ok' : ' fail') + '\\n'); };
  const s = net.connect(Number(port), host, () => end(true));
  s.on('error', (e) => end(e.code === 'ECONNREFUSED'));
  setTimeout(() => end(false), Number(ms));
});
process.stdin.on('end', () => process.exit(0));
`;

/** TCP reachability from inside a network namespace, through one long-lived relay (netns only). */
export class NetnsProber {
  private child?: ChildProcess;
  private next = 0;
  private readonly waiting = new Map<string, (ok: boolean) => void>();

  constructor(private readonly netns: string) {}

  private relay(): ChildProcess {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) return this.child;
    const [cmd, ...args] = [...inNetns(this.netns), process.execPath, '-e', PROBER];
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'ignore'] });
    child.on('error', () => undefined);
    child.stdin!.on('error', () => undefined);
    child.on('exit', () => {
      for (const done of this.waiting.values()) done(false);
      this.waiting.clear();
    });
    createInterface({ input: child.stdout! }).on('line', (l) => {
      const [id, answer] = l.split(' ');
      this.waiting.get(id)?.(answer === 'ok');
      this.waiting.delete(id);
    });
    this.child = child;
    return child;
  }

  /** Whether `host` answers on `port` from inside the namespace within `timeoutMs`. */
  reachable(host: string, port: number, timeoutMs: number): Promise<boolean> {
    const id = String(this.next++);
    const p = new Promise<boolean>((resolve) => this.waiting.set(id, resolve));
    this.relay().stdin!.write(`${id} ${host} ${port} ${timeoutMs}\n`);
    return within(p, timeoutMs + 1000, false);
  }

  close(): void {
    this.child?.stdin?.end();
    this.child?.kill('SIGKILL');
    this.child = undefined;
  }
}
