/**
 * The cluster network (issue 12): two tiny guests on two nodes of a dev cluster (e2e/harness.ts
 * startCluster: one network namespace per node, agents with the cluster network, bridge binding)
 * against the same two guests started by hand: raw QEMU with the argv the agent used (vm.json;
 * only the disk, the tap and the cloud-init seed differ) in the two nodes of a second dev
 * cluster (createDevCluster: same fabric shape), on a plain bridge + VXLAN made here with `ip`,
 * no nftables, no dnsmasq (static addresses from user data).
 *
 * Both pairs run at once and are driven from their serial consoles (the tiny guest's root shell
 * after an Enter), rounds alternating which side goes first:
 * (a) TCP throughput A→B: `dd if=/dev/zero bs=64k | nc B 5001` into `nc -ll -p 5001 -e` `wc -c`
 *     (checked: the byte count arrives), timed in guest A with busybox `time` (10 ms steps);
 * (b) round-trip latency A→B: `ping -i 0.2`, median and p95 of the replies' times;
 * (c) HTTP request latency from node A's namespace (curl, a new connection each, B's httpd)
 *     through a ClusterIP whose one endpoint is B vs straight to B's address;
 * (d) start of the platform guests: QEMU start (vm.json launchedAt) → VMI Running → its IP in
 *     status.interfaces → the guest's DHCP lease (VESSEL-IP on serial), polled every 20 ms.
 *
 *   node --import tsx bench/network.bench.ts        # about 3 minutes on 2 quiet cores, up to 9 loaded
 *   env: BENCH_NET_ROUNDS (5), BENCH_NET_MIB (16: MiB per throughput run), BENCH_NET_PINGS (25 per
 *        round), BENCH_NET_HTTP_N (200 requests per side)
 */
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_QEMU_PRIORITY } from '@vessel/agent';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { startCluster, type TestCluster } from '../e2e/harness.ts';
import { runDirOf } from '../e2e/tiny-vm.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { createDevCluster, runInNode, type DevCluster, type DevNode } from '../packages/agent/network/devcluster.ts';
import { ip, bridgeCmd } from '../packages/agent/network/exec.ts';
import { buildCloudInitIso } from '../packages/agent/qemu/cloudinit.ts';
import { findPriorityTools } from '../packages/agent/qemu/priority.ts';
import { attachSerial, launch, readFrom, runDirFiles, serialLogSize, terminate, waitForSerial } from '../packages/agent/qemu/process.ts';
import { cloneVolume } from '../packages/agent/storage/clone.ts';
import { qemuImg } from '@vessel/agent';
import {
  chardevsOf,
  envInt,
  errText,
  isMain,
  loadLine,
  ms,
  now,
  percentile,
  pollUntil,
  printResult,
  PVCS,
  ratio,
  sleep,
  volumePath,
  type BenchResult,
  type Figure,
} from './lib.ts';

const VMS: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMIS: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const SVC: ResourceRef = { group: '', version: 'v1', plural: 'services', namespaced: true };
const NS = 'default';
/** Fixed addresses from IPAM's static band, so the raw guests can have the same ones. */
const ADDR = { a: '10.244.0.50', b: '10.244.0.51' } as const;
const PORT = 5001;
/** A transfer that takes longer is a failure (a stall), not a sample. */
const TPUT_TIMEOUT_S = 150;
const BOOT_TIMEOUT_MS = 300_000;

type Side = 'vessel' | 'raw';
const sorted = (xs: number[]) => [...xs].sort((x, y) => x - y);
const pct = (xs: number[], q: number) => percentile(sorted(xs), q);
const p50p95 = (xs: number[]) => `p50 ${ms(pct(xs, 50))}, p95 ${ms(pct(xs, 95))} (n=${xs.length})`;

function vmManifest(name: string, node: string, address: string): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: NS },
    spec: {
      runStrategy: 'Always',
      template: {
        metadata: { labels: { app: name }, annotations: { 'ipam.vessel.io/ip': address } },
        spec: {
          terminationGracePeriodSeconds: 2,
          nodeSelector: { 'kubernetes.io/hostname': node },
          domain: {
            resources: { requests: { memory: '128Mi' } },
            devices: {
              disks: [
                { name: 'root', disk: { bus: 'virtio' } },
                { name: 'cloudinit', disk: { bus: 'virtio' } },
              ],
              interfaces: [{ name: 'default', bridge: {} }],
            },
          },
          networks: [{ name: 'default', pod: {} }],
          volumes: [
            { name: 'root', dataVolume: { name: `${name}-root` } },
            { name: 'cloudinit', cloudInitNoCloud: { userData: '#!/bin/sh\ntrue\n' } },
          ],
        },
      },
      dataVolumeTemplates: [
        {
          metadata: { name: `${name}-root` },
          spec: {
            sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'vessel-images' },
            storage: { storageClassName: 'shared', resources: { requests: { storage: '1Gi' } } },
          },
        },
      ],
    },
  };
}

/** A guest's serial console with its shell, and its run directory (serial.log). */
interface Console {
  runDir: string;
  sock: Socket;
}
let seq = 0;

async function openConsole(runDir: string): Promise<Console> {
  const sock = await attachSerial(runDir, { timeoutMs: 10_000 });
  sock.on('data', () => undefined);
  sock.on('error', () => undefined);
  sock.write('\n'); // the tiny guest starts its console shell on Enter
  await sleep(1000);
  return { runDir, sock };
}

/**
 * Types `cmd` on the console and returns what serial.log got until the end marker. The marker
 * is computed by the shell, so the echoed command line does not match it.
 */
async function sh(c: Console, cmd: string, timeoutMs = 120_000): Promise<string> {
  const id = ++seq;
  const since = await serialLogSize(c.runDir);
  c.sock.write(`${cmd}; echo VESSEL-DONE-$((${id} + 0))\n`);
  const m = await waitForSerial(c.runDir, new RegExp(`VESSEL-DONE-${id}\\b`), timeoutMs, { since, pollMs: 20 });
  return (await readFrom(runDirFiles(c.runDir).serialLog, since, m.offset - since)).data.toString('latin1');
}

/** The raw baseline's hosts: a plain bridge and VXLAN per node, a tap per guest; nothing else. */
async function handMadeNetwork(raw: DevCluster): Promise<string[]> {
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
  return taps;
}

/** Raw QEMU's user data: no DHCP server on the hand-made network, so a static address. */
const staticAddress = (addr: string) =>
  '#!/bin/sh\n' +
  'i=0; while [ -z "$(pidof udhcpc)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n' +
  'killall udhcpc 2>/dev/null\n' +
  `ip -4 addr flush dev eth0; ip addr add ${addr}/16 dev eth0; ip link set eth0 up; echo VESSEL-IP ${addr}\n`;

export async function runNetwork(): Promise<BenchResult> {
  const started = now();
  const figures: Figure[] = [];
  const problems: string[] = [];
  const rounds = envInt('BENCH_NET_ROUNDS', 5);
  const mib = envInt('BENCH_NET_MIB', 16);
  const pings = envInt('BENCH_NET_PINGS', 25);
  const httpN = envInt('BENCH_NET_HTTP_N', 200);
  const dir = await mkdtemp(join(tmpdir(), 'vessel-netbench-'));
  let c: TestCluster | undefined;
  let raw: DevCluster | undefined;
  const rawDirs: string[] = [];
  const consoles: Console[] = [];
  try {
    c = await startCluster({ nodes: 2 });
    const [nodeA, nodeB] = c.nodes.cluster.nodes as DevNode[];
    await ensureTinyImage(c.client, (l) => console.log(`  ${l}`), { storageClass: 'shared' });
    const golden = volumePath(await c.client.get(PVCS, 'tiny', { namespace: 'vessel-images' }));
    if (!golden) throw new Error('claim vessel-images/tiny has no vessel.io/volume-path');
    const svc = await c.client.create(
      SVC,
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'bench-b', namespace: NS }, spec: { selector: { app: 'bench-b' }, ports: [{ port: 80 }] } },
      { namespace: NS },
    );
    const clusterIP = (svc.spec as { clusterIP: string }).clusterIP;

    // (d) Start: both VMs at once, their VMIs polled every 20 ms.
    const names = { a: 'bench-a', b: 'bench-b' } as const;
    const agentOf = { a: c.nodes.agents[0], b: c.nodes.agents[1] };
    const t0 = Date.now();
    await c.client.create(VMS, vmManifest(names.a, nodeA.name, ADDR.a), { namespace: NS });
    await c.client.create(VMS, vmManifest(names.b, nodeB.name, ADDR.b), { namespace: NS });
    const startOf = async (k: 'a' | 'b') => {
      const at: { running?: number; ip?: number; dhcpStart?: number; lease?: number; launched?: number } = {};
      const deadline = Date.now() + BOOT_TIMEOUT_MS;
      let runDir: string | undefined;
      while (Date.now() < deadline && (at.ip === undefined || at.lease === undefined)) {
        const st = ((await c!.client.get(VMIS, names[k], { namespace: NS }).catch(() => undefined))?.status ?? {}) as {
          phase?: string;
          interfaces?: { ipAddress?: string }[];
        };
        const t = Date.now();
        if (at.running === undefined && st.phase === 'Running') at.running = t;
        if (at.running !== undefined && at.ip === undefined && st.interfaces?.[0]?.ipAddress) at.ip = t;
        runDir ??= await runDirOf(agentOf[k].dataDir, NS, names[k]);
        const serial = runDir ? await readFile(join(runDir, 'serial.log'), 'latin1').catch(() => '') : '';
        // The boot script prints VESSEL-HOSTNAME just before it starts udhcpc, whose script prints VESSEL-IP.
        if (at.dhcpStart === undefined && serial.includes('VESSEL-HOSTNAME')) at.dhcpStart = t;
        if (at.lease === undefined && serial.includes('VESSEL-IP')) at.lease = t;
        await sleep(20);
      }
      if (!runDir || at.ip === undefined || at.dhcpStart === undefined || at.lease === undefined)
        throw new Error(`${names[k]} did not get Running, its IP and its lease within ${BOOT_TIMEOUT_MS} ms`);
      const meta = JSON.parse(await readFile(join(runDir, 'vm.json'), 'utf8')) as { argv: string[]; launchedAt: string };
      at.launched = Date.parse(meta.launchedAt);
      return { at: at as Required<typeof at>, runDir, argv: meta.argv };
    };
    const [sa, sb] = await Promise.all([startOf('a'), startOf('b')]);
    const toRunning = [sa, sb].map((s) => s.at.running - s.at.launched);
    const toIp = [sa, sb].map((s) => s.at.ip - s.at.running);
    const toLease = [sa, sb].map((s) => s.at.lease - s.at.running);
    const dhcp = [sa, sb].map((s) => s.at.lease - s.at.dhcpStart);
    figures.push({
      name: 'VMI Running → its IP in status / QEMU start → Running',
      ratio: ratio(Math.max(...toIp), Math.max(...toRunning)),
      detail:
        `raw: create → Running ${[sa, sb].map((s) => ms(s.at.running - t0)).join(', ')}; QEMU start → Running ${toRunning.map(ms).join(', ')}; ` +
        `Running → IP in status ${toIp.map(ms).join(', ')}; Running → the guest has its lease (VESSEL-IP; mostly its TCG boot) ${toLease.map(ms).join(', ')}, ` +
        `of which udhcpc's exchange with the node's dnsmasq (VESSEL-HOSTNAME → VESSEL-IP) ${dhcp.map(ms).join(', ')} (20 ms polls)`,
    });
    for (const s of [sa, sb]) await waitForSerial(s.runDir, 'VESSEL-GUEST-READY', BOOT_TIMEOUT_MS);

    // The baseline: the same argv by hand in the second dev cluster's namespaces.
    raw = await createDevCluster({ nodes: 2 });
    const taps = await handMadeNetwork(raw);
    const tools = await findPriorityTools();
    const virtualSize = (await qemuImg.info(golden, { format: 'qcow2', forceShare: true })).virtualSize;
    const rawRun = async (k: 'a' | 'b', i: number, from: { runDir: string; argv: string[] }) => {
      const runDir = join(dir, `raw-${k}`);
      await mkdir(runDir, { recursive: true });
      rawDirs.push(runDir);
      const disk = join(dir, `raw-${k}.qcow2`);
      await cloneVolume({ source: golden, dest: disk, size: virtualSize, linked: true });
      const iso = join(dir, `raw-${k}-cidata.iso`);
      await buildCloudInitIso({ kind: 'noCloud', userData: staticAddress(ADDR[k]), metaData: { instanceId: `raw-${k}`, localHostname: names[k] }, dest: iso });
      // Swap the VM's own files (disk, seed) and its tap for the baseline's; the rest stays.
      const own = (a: string) => /(?:^|,)filename=([^,]+)/.exec(a)?.[1];
      const swap = (a: string): string => {
        const f = own(a);
        if (f?.endsWith('.iso')) return a.replace(f, iso);
        if (f?.startsWith('/') && !f.startsWith('/dev/')) return a.replace(f, disk);
        return a.replace(/(^|,)ifname=[^,]+/, `$1ifname=${taps[i]}`);
      };
      const argv = from.argv.map(swap);
      const swapped = argv.filter((a, j) => a !== from.argv[j]).length;
      if (swapped !== 3) throw new Error(`the raw argv of ${k}: ${swapped} of disk, seed and tap swapped: ${from.argv.join(' ')}`);
      await launch({
        runDir,
        argv,
        chardevs: chardevsOf(from.argv),
        vnc: true,
        noShutdown: true,
        vm: { namespace: 'bench', name: `raw-${k}` },
        priority: { nice: DEFAULT_QEMU_PRIORITY.nice, batch: DEFAULT_QEMU_PRIORITY.batch, tools },
        netns: raw!.nodes[i].netns,
      });
      return runDir;
    };
    const ra = await rawRun('a', 0, sa);
    const rb = await rawRun('b', 1, sb);
    for (const d of [ra, rb]) {
      await waitForSerial(d, 'VESSEL-IP', BOOT_TIMEOUT_MS);
      await waitForSerial(d, 'VESSEL-GUEST-READY', BOOT_TIMEOUT_MS);
    }
    const con = {
      vessel: { a: await openConsole(sa.runDir), b: await openConsole(sb.runDir) },
      raw: { a: await openConsole(ra), b: await openConsole(rb) },
    };
    consoles.push(con.vessel.a, con.vessel.b, con.raw.a, con.raw.b);
    for (const side of ['vessel', 'raw'] as Side[]) {
      // B receives: a persistent listener whose per-connection program reports the byte count on
      // the console. (A listener with the console shell's /dev/null as stdin would end the
      // connection early: busybox nc stops at its stdin's end.)
      await sh(con[side].b, `printf '#!/bin/sh\\necho VESSEL-RX $(wc -c) >/dev/console\\n' >/run/rx; chmod +x /run/rx`);
      con[side].b.sock.write(`nc -ll -p ${PORT} -e /run/rx &\n`);
      await pollUntil(
        `${side}: A reaching B`,
        async () => (/ 0% packet loss/.test(await sh(con[side].a, `ping -c 1 -W 2 ${ADDR.b}`)) ? true : undefined),
        60_000,
        500,
      );
    }
    await sleep(500);

    const bytes = mib * 1024 * 1024;
    const tail = async (runDir: string) => JSON.stringify((await readFile(runDirFiles(runDir).serialLog, 'latin1').catch(() => '')).slice(-400));
    /** Seconds for one transfer, or NaN (and a PROBLEM) when it failed or hung: bounded in the guest by `timeout`. */
    const tput = async (side: Side): Promise<number> => {
      const since = await serialLogSize(con[side].b.runDir);
      const out = await sh(
        con[side].a,
        `time timeout ${TPUT_TIMEOUT_S} sh -c 'dd if=/dev/zero bs=64k count=${mib * 16} 2>/dev/null | nc ${ADDR.b} ${PORT}'`,
        (TPUT_TIMEOUT_S + 60) * 1000,
      );
      const m = /real\s+(\d+)m\s*([\d.]+)s/.exec(out);
      const rx = await waitForSerial(con[side].b.runDir, /VESSEL-RX (\d+)/, 30_000, { since, pollMs: 20 }).catch(() => undefined);
      if (!m || /can't connect|non-zero status/.test(out) || Number(rx?.match[1]) !== bytes) {
        problems.push(
          `${side}: a transfer failed, B received ${rx?.match[1] ?? 'nothing'} of ${bytes} bytes; A: ${JSON.stringify(out.slice(-300))}; B's console: ${await tail(con[side].b.runDir)}`,
        );
        return NaN;
      }
      return Number(m[1]) * 60 + Number(m[2]);
    };
    const ping = async (side: Side): Promise<number[]> => {
      const out = await sh(con[side].a, `ping -c ${pings} -i 0.2 ${ADDR.b}`, 120_000);
      // One sample per sequence number (a duplicated reply is not a second sample).
      const t = [...new Map([...out.matchAll(/seq=(\d+) ttl=\d+ time=([\d.]+) ms/g)].map((x) => [x[1], Number(x[2])])).values()];
      if (t.length < pings) problems.push(`${side}: ${t.length} of ${pings} pings answered`);
      return t;
    };
    await tput('vessel'); // warm-up, not counted
    await tput('raw');
    const secs: Record<Side, number[]> = { vessel: [], raw: [] };
    const rtt: Record<Side, number[]> = { vessel: [], raw: [] };
    for (let r = 0; r < rounds; r++) {
      const order: Side[] = r % 2 ? ['raw', 'vessel'] : ['vessel', 'raw'];
      for (const s of order) {
        const t = await tput(s);
        if (Number.isFinite(t)) secs[s].push(t);
      }
      for (const s of order) rtt[s].push(...(await ping(s)));
      console.log(`  round ${r + 1}/${rounds}: ${order.map((s) => `${s} ${secs[s].at(-1)?.toFixed(2)} s`).join(', ')}`);
    }
    const mbps = (s: number) => (bytes * 8) / s / 1e6;
    const medSecs = (s: Side) => pct(secs[s], 50);
    figures.push({
      name: 'TCP throughput A→B across nodes, Vessel/raw (goal ≥ 0.9)',
      ratio: ratio(mbps(medSecs('vessel')), mbps(medSecs('raw'))),
      detail:
        `${mib} MiB per run, medians of ${rounds}: Vessel ${mbps(medSecs('vessel')).toFixed(1)} Mbit/s (${secs.vessel.map((x) => x.toFixed(2)).join(' ')} s), ` +
        `raw ${mbps(medSecs('raw')).toFixed(1)} Mbit/s (${secs.raw.map((x) => x.toFixed(2)).join(' ')} s); ${mbps(medSecs('vessel')) >= 0.9 * mbps(medSecs('raw')) ? 'met' : 'NOT met'}`,
    });
    figures.push({
      name: 'ping RTT A→B across nodes p50, Vessel/raw (goal ≤ 1.1)',
      ratio: ratio(pct(rtt.vessel, 50), pct(rtt.raw, 50)),
      detail: `Vessel ${p50p95(rtt.vessel)}; raw ${p50p95(rtt.raw)}; ${pct(rtt.vessel, 50) <= 1.1 * pct(rtt.raw, 50) ? 'met' : 'NOT met'}`,
    });
    figures.push({ name: 'ping RTT p95, Vessel/raw', ratio: ratio(pct(rtt.vessel, 95), pct(rtt.raw, 95)), detail: 'same samples' });

    // (c) HTTP from node A's namespace: through the ClusterIP (one endpoint, B) vs to B itself.
    await pollUntil('the Service has its endpoint on node A', async () =>
      (await runInNode(nodeA, ['nft', 'list', 'table', 'ip', 'vessel-services'])).stdout.includes(ADDR.b) ? true : undefined,
    );
    const http: Record<'svc' | 'direct', number[]> = { svc: [], direct: [] };
    const batch = 25;
    for (let i = 0; i < Math.ceil(httpN / batch); i++) {
      for (const k of i % 2 ? (['direct', 'svc'] as const) : (['svc', 'direct'] as const)) {
        const url = `http://${k === 'svc' ? clusterIP : ADDR.b}/`;
        const args = Array.from({ length: batch }, () => ['-o', '/dev/null', url]).flat();
        const r = await runInNode(nodeA, ['curl', '-s', '--max-time', '5', '-w', '%{http_code} %{time_total}\\n', ...args], 120_000);
        for (const line of r.stdout.trim().split('\n')) {
          const [code, t] = line.split(' ');
          if (code === '200') http[k].push(Number(t) * 1000);
          else problems.push(`HTTP ${k}: ${line || r.stderr}`);
        }
      }
    }
    figures.push({
      name: 'HTTP request via ClusterIP / straight to the VM, p50',
      ratio: ratio(pct(http.svc, 50), pct(http.direct, 50)),
      detail: `curl from node A, a new connection each, B on node B: ClusterIP ${p50p95(http.svc)}; direct ${p50p95(http.direct)}`,
    });
    figures.push({ name: 'HTTP request via ClusterIP / straight, p95', ratio: ratio(pct(http.svc, 95), pct(http.direct, 95)), detail: 'same samples' });
    console.log(`  ${loadLine()}`);
  } catch (e) {
    problems.push(`failed: ${errText(e)}`);
  } finally {
    for (const k of consoles) k.sock.destroy();
    for (const d of rawDirs) await terminate(d, { graceMs: 2000 }).catch((e: Error) => problems.push(`stopping raw QEMU in ${d}: ${e.message}`));
    await raw?.destroy().catch((e: Error) => problems.push(`removing the baseline's namespaces: ${e.message}`));
    if (c) {
      for (const n of ['bench-a', 'bench-b']) await c.client.delete(VMS, n, { namespace: NS }).catch(() => undefined);
      await pollUntil('the VMIs gone', async () => ((await c!.client.list(VMIS, { namespace: NS })).items.length === 0 ? true : undefined), 120_000).catch(
        (e: Error) => problems.push(e.message),
      );
      await c.close();
    }
    await rm(dir, { recursive: true, force: true });
  }
  return { bench: 'network', figures, problems, seconds: (now() - started) / 1000 };
}

if (isMain(import.meta.url)) {
  const r = await runNetwork();
  printResult(r);
  process.exit(r.problems.length > 0 ? 1 : 0);
}
