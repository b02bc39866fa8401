/**
 * The dev cluster's hosts on one machine (`vessel up --nodes N`, e2e `startCluster`): one network
 * namespace per node standing in for a host, and one more holding the fabric, a bridge with a
 * veth to each node (`fab0` inside the node, with its fabric address). Everything lives inside
 * namespaces this creates, nothing in the host's own, and every name carries a random id, so
 * clusters of tests running side by side never meet.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { NetworkError } from './errors.ts';
import { ip, runCmd } from './exec.ts';

export interface DevClusterOptions {
  nodes: number;
  /** The fabric segment (a /24 or larger, IPv4); node i gets host .10+i. Default 10.233.0.0/24. */
  fabricCidr?: string;
  /** Node names (default `node-<i>`, counting from 0). */
  nodeNames?: string[];
  /** The short id in every name (default random, 6 hex digits). */
  id?: string;
}

export interface DevNode {
  name: string;
  /** The node's network namespace (`ip netns`). */
  netns: string;
  /** The node's fabric address (no prefix). */
  fabricIp: string;
  /** With prefix, as set on fab0. */
  fabricCidr: string;
}

export interface DevCluster {
  id: string;
  /** The namespace holding the fabric bridge. */
  fabricNetns: string;
  /**
   * The fabric's host .1, held by the fabric bridge: the "outside" (the default gateway every
   * node routes to), so VM egress through a node can be tested without leaving the namespaces.
   */
  outsideIp: string;
  nodes: DevNode[];
  /** Kills what still runs in the namespaces (QEMU, dnsmasq) and deletes them, the VMs' pods too. Idempotent. */
  destroy(): Promise<void>;
}

export const DEFAULT_FABRIC_CIDR = '10.233.0.0/24';

/** The fabric address of node `i` in `cidr`: host part 10 + i (i = -9: host .1, the outside). */
export function fabricAddress(cidr: string, i: number): { ip: string; cidr: string } {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr);
  const prefix = m ? Number(m[5]) : -1;
  const octets = m ? m.slice(1, 5).map(Number) : [];
  if (!m || octets.some((o) => o > 255) || prefix < 8 || prefix > 24)
    throw new NetworkError('InvalidArgument', `bad fabric CIDR ${JSON.stringify(cidr)}: an IPv4 network of /8 to /24, e.g. ${DEFAULT_FABRIC_CIDR}`);
  const base = (octets.reduce((a, o) => a * 256 + o, 0) >>> (32 - prefix)) * 2 ** (32 - prefix);
  const v = base + 10 + i;
  const addr = [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join('.');
  return { ip: addr, cidr: `${addr}/${prefix}` };
}

export async function createDevCluster(opts: DevClusterOptions): Promise<DevCluster> {
  if (!Number.isInteger(opts.nodes) || opts.nodes < 1 || opts.nodes > 200)
    throw new NetworkError('InvalidArgument', `a dev cluster has 1 to 200 nodes, not ${opts.nodes}`);
  const id = opts.id ?? randomBytes(3).toString('hex');
  if (!/^[a-z0-9]{1,8}$/.test(id)) throw new NetworkError('InvalidArgument', `bad dev cluster id ${JSON.stringify(id)}: 1 to 8 lowercase letters or digits`);
  const cidr = opts.fabricCidr ?? DEFAULT_FABRIC_CIDR;
  const fabricNetns = `vsl-${id}-fabric`;
  const outside = fabricAddress(cidr, -9);
  const nodes: DevNode[] = Array.from({ length: opts.nodes }, (_, i) => {
    const a = fabricAddress(cidr, i);
    return { name: opts.nodeNames?.[i] ?? `node-${i}`, netns: `vsl-${id}-n${i}`, fabricIp: a.ip, fabricCidr: a.cidr };
  });
  const made: string[] = [];
  const destroy = async () => {
    // The VMs' pods (masquerade binding, pod.ts) are named after their node: `<node netns>-p<hex>`.
    const all = (await ip(undefined, ['netns', 'list'])).stdout.split('\n').map((l) => l.split(' ')[0]);
    for (const pod of all.filter((n) => nodes.some((node) => n.startsWith(`${node.netns}-p`)))) await deleteNetns(pod);
    for (const ns of [...made].reverse()) await deleteNetns(ns);
    made.length = 0;
  };
  try {
    await ip(undefined, ['netns', 'add', fabricNetns]);
    made.push(fabricNetns);
    await ip(fabricNetns, ['link', 'set', 'lo', 'up']);
    await ip(fabricNetns, ['link', 'add', 'fabric', 'type', 'bridge']);
    await ip(fabricNetns, ['link', 'set', 'fabric', 'up']);
    await ip(fabricNetns, ['addr', 'add', outside.cidr, 'dev', 'fabric']);
    for (const [i, n] of nodes.entries()) {
      await ip(undefined, ['netns', 'add', n.netns]);
      made.push(n.netns);
      await ip(n.netns, ['link', 'set', 'lo', 'up']);
      // Both ends are made inside the fabric namespace, the node's end moved straight into its
      // own: no interface ever appears in the host's namespace.
      await ip(fabricNetns, ['link', 'add', `n${i}`, 'type', 'veth', 'peer', 'name', 'fab0', 'netns', n.netns]);
      await ip(fabricNetns, ['link', 'set', `n${i}`, 'master', 'fabric', 'up']);
      await ip(n.netns, ['addr', 'add', n.fabricCidr, 'dev', 'fab0']);
      await ip(n.netns, ['link', 'set', 'fab0', 'up']);
      // As a host's uplink: what is not on the fabric or the VM network leaves through the outside.
      await ip(n.netns, ['route', 'add', 'default', 'via', outside.ip, 'dev', 'fab0']);
    }
  } catch (e) {
    await destroy();
    throw e;
  }
  return { id, fabricNetns, outsideIp: outside.ip, nodes, destroy };
}

/** Kills every process left in `ns` (they would keep it alive), then deletes it. */
export async function deleteNetns(ns: string): Promise<void> {
  const r = await ip(undefined, ['netns', 'pids', ns], { okCodes: [1, 255] });
  const pids =
    r.code === 0
      ? r.stdout
          .split(/\s+/)
          .filter(Boolean)
          .map(Number)
          .filter((p) => p > 1 && p !== process.pid)
      : [];
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const pid of pids) {
    for (
      let i = 0;
      i < 50 &&
      (await readFile(`/proc/${pid}/stat`, 'utf8').then(
        (s) => !/\) [ZX] /.test(s),
        () => false,
      ));
      i++
    )
      await new Promise((res) => setTimeout(res, 20));
  }
  await ip(undefined, ['netns', 'del', ns], { okCodes: [1, 255] });
}

/** Runs argv in the node's namespace (tests: ping, curl from a node). */
export function runInNode(node: Pick<DevNode, 'netns'>, argv: readonly string[], timeoutMs = 15_000): ReturnType<typeof runCmd> {
  return runCmd(['ip', 'netns', 'exec', node.netns, ...argv], { timeoutMs, okCodes: [...Array(256).keys()] });
}
