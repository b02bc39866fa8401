/**
 * Live migration end to end on a two-node dev cluster (real QEMU under TCG, real namespaces,
 * bridges and VXLAN): one tiny guest with the bridge binding and its root disk on the shared
 * pool, printing its uptime every second. A VirtualMachineInstanceMigration moves it to the
 * other node: Succeeded, the VMI on the other node with the same IP and MAC, the guest did not
 * reboot (its uptime goes on in the target's serial log), it answers TCP from the other node's
 * namespace, and one QEMU runs. A ping every 100 ms from a node's namespace gives the longest
 * interruption. The stream is TLS (the default): the target QEMU's migration uses the x509
 * credentials, and on the source node's fabric interface the migration port carries many MiB in
 * which a marker the guest holds in RAM (a random string filling 4 MiB of a tmpfs) never appears;
 * the next migration (`vessel migrate`, TLS off for it: disableTLS) shows the marker in its plain
 * stream, as the same capture sees it. The target QEMU announces the guest's MAC as the guest starts there: the source
 * node's bridge sees QEMU's RARP over the VXLAN port (a raw socket there) and its forwarding entry
 * for the MAC points at the VXLAN port right at Succeeded. Then a migration whose target QEMU is
 * killed fails and leaves the source running. Last, `vessel drain` of its node moves it off (the
 * node cordoned), and the drain taint (the KubeVirt object's nodeDrainTaintKey, set to a key of
 * the test's) on the other node moves it back.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { runInNode, type DevNode } from '@vessel/agent';
import { migration } from '@vessel/api';
import type { ResourceRef, Watch } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startCluster, type TestCluster } from './harness.ts';
import { runDirOf, serialLog, tinyVm } from './tiny-vm.ts';
import { autogroupNice } from '../packages/agent/qemu/priority.ts';
import { parseTimeline, pauseSegments } from '../packages/agent/vms/migration-timeline.ts';
import { captureFrames, captureStream, type StreamCapture, type StreamSummary } from './frames.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const NODE: ResourceRef = { group: '', version: 'v1', plural: 'nodes', namespaced: false };
const KUBEVIRT: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'kubevirts', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const ns = 'default';
const NAME = 'mover';
const VESSEL = fileURLToPath(new URL('../bin/vessel', import.meta.url));
type Obj = Record<string, unknown>;
type MigrationState = {
  targetNode?: string;
  sourceNode?: string;
  completed?: boolean;
  failed?: boolean;
  failureReason?: string;
  mode?: string;
  startTimestamp?: string;
  endTimestamp?: string;
  targetNodeAddress?: string;
  migrationConfiguration?: { disableTLS?: boolean };
};
type VmiStatus = {
  phase?: string;
  nodeName?: string;
  interfaces?: { ipAddress?: string; mac?: string }[];
  migrationState?: MigrationState;
  conditions?: { type: string; status: string; message?: string }[];
};

let c: TestCluster;

/** A taint key of the test's: the KubeVirt object's nodeDrainTaintKey in the drain test. */
const TEST_DRAIN_KEY = 'drain.vessel.test/maintenance';

/** A string of this run's the guest keeps in RAM: looked for in the migration stream on the wire. */
const MARKER = randomBytes(32).toString('hex');
/** The marker's copies (64 bytes each, doubled 16 times: 4 MiB) in a tmpfs. */
const MARKER_BYTES = 64 << 16;
/**
 * The guest prints its uptime every second (continuity across the migration: no reboot), after it
 * has filled 4 MiB of a tmpfs (guest RAM) with the marker (`VESSEL-MARKED`).
 */
const USER_DATA = `#!/bin/sh
mkdir -p /mark && mount -t tmpfs -o size=16m tmpfs /mark && printf %s ${MARKER} > /mark/m
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do cat /mark/m /mark/m > /mark/n && mv /mark/n /mark/m; done
echo "VESSEL-MARKED $(wc -c < /mark/m)"
(while true; do echo "VESSEL-UPTIME $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done) &
`;

function migratableVm(): Obj {
  // Its disk on the shared pool (every node opens it); LiveMigrate: what `vessel drain` and the drain taint move (KubeVirt's default is None).
  return tinyVm(NAME, {
    namespace: ns,
    binding: 'bridge',
    userData: USER_DATA,
    storageClass: 'shared',
    terminationGracePeriodSeconds: 5,
    evictionStrategy: 'LiveMigrate',
  });
}

const vmiStatus = async () => ((await c.client.get(VMI, NAME, { namespace: ns }).catch(() => undefined))?.status ?? {}) as VmiStatus;
const node = (name: string): DevNode => c.nodes.cluster.nodes.find((n) => n.name === name)!;
const agentOf = (name: string) => c.nodes.agents.find((a) => a.nodeName === name)!;
const uptimes = (text: string) => [...text.matchAll(/VESSEL-UPTIME (\d+(?:\.\d+)?)/g)].map((m) => Number(m[1]));
const lastUptime = async (nodeName: string) => uptimes(await serialLog(agentOf(nodeName).dataDir, ns, NAME)).at(-1);

/** QEMU processes of this cluster (their command lines name its data directory). */
async function qemus(): Promise<number[]> {
  const pids: number[] = [];
  for (const d of await readdir('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const cmd = await readFile(join('/proc', d, 'cmdline'), 'utf8').catch(() => '');
    if (cmd.startsWith('qemu-system') && cmd.includes(c.dataDir)) pids.push(Number(d));
  }
  return pids;
}

/**
 * The migration port's share of what a capture on the source's fabric interface saw: the port of
 * the VMI's migrationState.targetNodeAddress (where the target QEMU listened).
 */
async function onMigrationPort(capture: StreamCapture): Promise<{ port: string; bytes: number; marked: number; all: StreamSummary }> {
  const all = await capture.stop();
  const port = (await vmiStatus()).migrationState?.targetNodeAddress?.split(':').at(-1) ?? '';
  return { port, ...(all.ports[port] ?? { bytes: 0, marked: 0 }), all };
}

async function migrate(name: string): Promise<void> {
  await c.client.create(
    VMIM,
    { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: ns }, spec: { vmiName: NAME } },
    { namespace: ns },
  );
}
const vmimStatus = async (name: string) =>
  ((await c.client.get(VMIM, name, { namespace: ns })).status ?? {}) as {
    phase?: string;
    migrationState?: MigrationState;
    phaseTransitionTimestamps?: { phase: string }[];
  };

/** The agents' `timeline` lines (migration-timeline.ts): each migration's QEMU event times, per side. */
const timelines: string[] = [];

before(async () => {
  c = await startCluster({ nodes: 2, nodeLog: (l) => void (l.includes(': timeline ') && timelines.push(l)) });
  await ensureTinyImage(c.client, () => undefined, { storageClass: 'shared' });
});
after(async () => {
  if (!c) return;
  for (const n of c.nodes.cluster.nodes) await c.client.patch(NODE, n.name, { spec: { unschedulable: null, taints: null } }).catch(() => undefined);
  await c.client
    .patch(KUBEVIRT, 'kubevirt', { spec: { configuration: { migrations: { nodeDrainTaintKey: null, disableTLS: null } } } }, { namespace: 'kubevirt' })
    .catch(() => undefined);
  await c.client.delete(VM, NAME, { namespace: ns }).catch(() => undefined);
  await eventually('the VMI gone', async () => ((await c.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000).catch(
    () => undefined,
  );
  await c.close();
});

test('a running VM on the shared pool moves to the other node: same IP and MAC, no reboot, it answers there, one QEMU', { timeout: 900_000 }, async () => {
  await c.client.create(VM, migratableVm(), { namespace: ns });
  const running = await eventually(
    'the VMI Running, live-migratable, with its IP',
    async () => {
      const s = await vmiStatus();
      const lm = s.conditions?.find((x) => x.type === 'LiveMigratable');
      return s.phase === 'Running' && s.interfaces?.[0]?.ipAddress && lm?.status === 'True' ? s : undefined;
    },
    300_000,
  );
  const source = running.nodeName!;
  const target = c.nodes.cluster.nodes.find((n) => n.name !== source)!.name;
  // The weight of the guest's QEMU session before the migration (qemu/priority.ts: autogroup nice 19).
  const sessionNice = async (node: string) => {
    const pid = (await readFile(join((await runDirOf(agentOf(node).dataDir, ns, NAME))!, 'qemu.pid'), 'utf8')).trim();
    return autogroupNice(pid);
  };
  const niceBefore = await sessionNice(source);
  const ip = running.interfaces![0].ipAddress!;
  const mac = running.interfaces![0].mac!;
  await eventually('the guest printing its uptime', async () => ((await lastUptime(source)) !== undefined ? true : undefined), 300_000);
  assert.ok((await serialLog(agentOf(source).dataDir, ns, NAME)).includes(`VESSEL-MARKED ${MARKER_BYTES}`), 'the guest holds the marker in RAM');
  // The guest answers before the migration, from the target node's namespace (over VXLAN).
  await eventually(
    `the guest (${ip}) answering TCP 8080 from ${target}`,
    async () => {
      const r = await runInNode(node(target), ['busybox', 'nc', '-w', '5', ip, '8080']);
      return r.stdout.includes('counter=') ? true : undefined;
    },
    120_000,
  );

  // A ping every 100 ms from the target node's namespace while the guest moves.
  const ping = spawn('ip', ['netns', 'exec', node(target).netns, 'busybox', 'ping', '-i', '0.1', ip], { stdio: ['ignore', 'pipe', 'ignore'] });
  let pingOut = '';
  ping.stdout.on('data', (d) => (pingOut += d));
  // The guest's frames reaching the source node over VXLAN (the pings stay on the target node).
  const capture = await captureFrames(node(source).netns, 'vsl-vx0', mac);
  const watches: Watch[] = [];
  let wire: StreamCapture | undefined;
  try {
    // Every frame on the source's fabric interface (the migration stream's way out), searched for the marker.
    wire = await captureStream(node(source).netns, 'fab0', MARKER);
    await new Promise((r) => setTimeout(r, 2000));
    // What a client sees while it runs: the VMI's Migrating condition, the source's progress on the migration object.
    const seen = { migrating: [] as string[], progress: [] as migration.MigrationProgress[] };
    watches.push(
      c.client.watchResource(VMI, { namespace: ns }, (e) => {
        const cond = ((e.object.status as VmiStatus | undefined)?.conditions ?? []).find((x) => x.type === 'Migrating');
        if (cond) seen.migrating.push(`${cond.status} ${cond.message}`);
      }),
      c.client.watchResource(VMIM, { namespace: ns }, (e) => {
        const p = migration.progressOf(e.object);
        if (p) seen.progress.push(p);
      }),
    );
    for (const w of watches) w.done.catch(() => undefined);
    const t0 = Date.now();
    await migrate('move-1');
    const done = await eventually(
      'the migration Succeeded or Failed',
      async () => {
        const s = await vmimStatus('move-1');
        return s.phase === 'Succeeded' || s.phase === 'Failed' ? s : undefined;
      },
      600_000,
    );
    const took = Date.now() - t0;
    const succeededAt = Date.now() / 1000;
    assert.equal(done.phase, 'Succeeded', `the migration failed: ${done.migrationState?.failureReason}`);
    // Soon after Succeeded the source node's bridge has the guest's MAC on its VXLAN port: the
    // target QEMU's announce (RARP, ethertype 8035: only QEMU sends those, never the guest) came
    // over VXLAN. Usually before the switch is seen; under load the target's first announce (50 ms
    // after it resumes) can come after the source's switch write, so within 3 s.
    const fdbPort = async () => {
      const fdb = JSON.parse((await runInNode(node(source), ['bridge', '-j', 'fdb', 'show', 'br', 'vsl-br0'])).stdout || '[]') as {
        mac: string;
        ifname?: string;
      }[];
      return fdb.find((e) => e.mac.toLowerCase() === mac.toLowerCase());
    };
    const atSucceeded = await fdbPort();
    await eventually(
      `the source bridge's entry for ${mac} on vsl-vx0 (at Succeeded: ${JSON.stringify(atSucceeded)})`,
      async () => ((await fdbPort())?.ifname === 'vsl-vx0' ? true : undefined),
      3_000,
      50,
    );
    console.log(
      `figures: the source bridge's entry for the guest's MAC on vsl-vx0 ${atSucceeded?.ifname === 'vsl-vx0' ? 'at' : 'after'} Succeeded (${(Date.now() / 1000 - succeededAt).toFixed(2)} s)`,
    );
    // The capture's own clock may stamp late when python starves: seen (soon) is what is asserted.
    await eventually(
      "QEMU's RARP announce on the source's VXLAN port",
      async () => (capture.frames().some((f) => f.type === '8035') ? true : undefined),
      10_000,
    );
    const rarps = capture.frames().filter((f) => f.type === '8035');
    console.log(
      `figures: announce: ${rarps.length} RARP and ${capture.frames().filter((f) => f.type === '0806').length} ARP frames from ${mac} on ${source}'s vsl-vx0 by Succeeded, ` +
        `the first RARP ${((succeededAt - rarps[0].t) * 1000).toFixed(0)} ms before Succeeded was seen`,
    );
    // On the wire: many MiB on the migration port (the guest's RAM), the marker in none of the frames.
    const tls = await onMigrationPort(wire);
    console.log(
      `figures: TLS stream on ${source}'s fab0: ${(tls.bytes / 1048576).toFixed(1)} MiB of TCP payload on port ${tls.port}; ` +
        `${tls.all.frames} frames, ${tls.all.marked} with the marker, ${tls.all.drops} dropped by the capture`,
    );
    assert.ok(tls.bytes >= 2 * MARKER_BYTES, `the migration stream captured on port ${tls.port}: ${tls.bytes} bytes (${JSON.stringify(tls.all)})`);
    assert.equal(tls.all.drops, 0, 'the capture kept every frame');
    assert.equal(tls.all.marked, 0, "the guest's marker appears in no frame on the fabric while the TLS migration runs");
    assert.deepEqual(
      done.phaseTransitionTimestamps!.map((p) => p.phase),
      ['Pending', 'Scheduling', 'Scheduled', 'PreparingTarget', 'TargetReady', 'Running', 'Succeeded'],
    );
    await eventually('the Migrating condition False', async () => (seen.migrating.at(-1)?.startsWith('False') ? true : undefined), 30_000);
    for (const w of watches) w.close();
    assert.ok(seen.migrating.includes(`True migration move-1 from ${source} to ${target}`), `Migrating True while it ran: ${seen.migrating.join(' | ')}`);
    assert.match(seen.migrating.at(-1)!, /^False migration move-1 .*: succeeded$/);
    // Progress published while the guest was sent (the first poll publishes at once), then the final figures.
    assert.ok(
      seen.progress.some((p) => p.status !== 'completed'),
      `progress during the transfer: ${JSON.stringify(seen.progress.map((p) => p.status))}`,
    );
    const last = seen.progress.at(-1)!;
    assert.equal(last.status, 'completed');
    assert.ok(last.memory.total >= 100 * 1024 * 1024, `guest RAM in the progress: ${last.memory.total}`);
    console.log(
      `progress seen: ${seen.progress.map((p) => `${p.status} ${(p.memory.remaining / 1048576).toFixed(1)}MiB-left ${p.memory.throughputMbps}Mbit/s`).join(', ')}`,
    );
    const after = await eventually(
      `the VMI Running on ${target}`,
      async () => {
        const s = await vmiStatus();
        return s.nodeName === target && s.phase === 'Running' && s.conditions?.find((x) => x.type === 'Ready')?.status === 'True' ? s : undefined;
      },
      60_000,
    );
    assert.equal(after.interfaces![0].ipAddress, ip, 'the same IP');
    assert.equal(after.interfaces![0].mac, mac, 'the same MAC');
    assert.equal(after.migrationState?.completed, true);
    assert.equal(after.migrationState?.sourceNode, source);
    // Under TCG the guest paused for the transfer (stop-and-copy) and runs on the target.
    const accel = ((await c.client.get(NODE, source)).metadata?.labels as Record<string, string> | undefined)?.['vessel.io/accelerator'];
    if (accel === 'tcg') assert.equal(after.migrationState?.mode, 'Paused', 'under TCG the guest paused for the transfer');
    // Both agents logged QEMU's event times: the source's STOP before its transfer, the guest
    // resumed on the target after its incoming migration completed (the pause, taken apart).
    const sides = await eventually(
      'both timeline lines',
      async () => {
        const got = Object.fromEntries(
          timelines
            .filter((l) => l.includes(`${ns}/${NAME}:`))
            .map(parseTimeline)
            .filter((x) => !!x)
            .map((x) => [x.side, x.marks]),
        );
        return got.source && got.target ? (got as Record<'source' | 'target', Record<string, number>>) : undefined;
      },
      10_000,
    );
    const pause = pauseSegments(sides.source, sides.target);
    if (accel === 'tcg') {
      const { stop, setup, active, completed } = sides.source;
      assert.ok(stop <= setup && setup <= active && active <= completed, `source: STOP, then setup, active, completed: ${JSON.stringify(sides.source)}`);
      assert.ok(
        sides.target.completed <= sides.target.resume && completed <= sides.target.completed,
        `target: completed, then RESUME: ${JSON.stringify(sides)}`,
      );
      assert.ok(pause.total > 0 && pause.total < 60_000, `the pause: ${JSON.stringify(pause)}`);
      // The target QEMU ran at nice 0 for the transfer (migration-boost.ts) and has its weight back since.
      if (niceBefore !== undefined) {
        await eventually('the target QEMU at its own weight again', async () => ((await sessionNice(target)) === niceBefore ? true : undefined), 10_000);
      }
    }
    console.log(`figures: the pause (QEMU events, ms): ${JSON.stringify(Object.fromEntries(Object.entries(pause).map(([k, v]) => [k, Math.round(v)])))}`);
    const vmiObj = await c.client.get(VMI, NAME, { namespace: ns });
    assert.equal((vmiObj.metadata!.labels as Record<string, string>)['kubevirt.io/nodeName'], target);
    // The guest did not reboot: the target's serial log goes on from the source's uptime.
    const before = (await lastUptime(source))!;
    const continued = await eventually(
      "the guest's uptime going on on the target",
      async () => {
        const u = uptimes(await serialLog(agentOf(target).dataDir, ns, NAME));
        return u.length >= 2 && u[0] >= before - 2 ? u : undefined;
      },
      120_000,
    );
    assert.ok(
      continued.every((u, i) => i === 0 || u >= continued[i - 1]),
      `uptime grows: ${continued.join(' ')}`,
    );
    // It answers TCP on its IP from the source node's namespace, and only one QEMU runs.
    await eventually(
      `the guest (${ip}) answering TCP 8080 from ${source}`,
      async () => {
        const r = await runInNode(node(source), ['busybox', 'nc', '-w', '5', ip, '8080']);
        return r.stdout.includes('counter=') ? true : undefined;
      },
      60_000,
    );
    await eventually('exactly one QEMU', async () => ((await qemus()).length === 1 ? true : undefined), 30_000);
    // The stream was TLS (the default): the target QEMU has the x509 credentials as its migration's,
    // written into a 0700 directory for the peer.
    const params = await agentOf(target).vms.qmpFor(ns, NAME)!.execute<Record<string, unknown>>('query-migrate-parameters');
    assert.equal(params['tls-creds'], 'migration-tls', JSON.stringify(params));
    // The credentials object's directory: one per set of credentials, under the peer's 0700 one.
    const tlsDir = await agentOf(target).vms.qmpFor(ns, NAME)!.execute<string>('qom-get', { path: '/objects/migration-tls', property: 'dir' });
    assert.equal(dirname(tlsDir), join(agentOf(target).dataDir, 'migration-tls', source));
    assert.equal((await stat(dirname(tlsDir))).mode & 0o777, 0o700);
    assert.equal((await stat(tlsDir)).mode & 0o777, 0o700);
    assert.ok((await readFile(join(tlsDir, 'ca-cert.pem'), 'utf8')).split('BEGIN CERTIFICATE').length === 3, 'both nodes’ migration CAs');
    await new Promise((r) => setTimeout(r, 1000));
    // busybox ping writes through stdio: its output is complete once it has exited.
    const exited = new Promise((r) => ping.on('close', r));
    ping.kill('SIGINT');
    await exited;
    const seqs = [...pingOut.matchAll(/ seq=(\d+)/g)].map((m) => Number(m[1]));
    let gap = 0;
    for (let i = 1; i < seqs.length; i++) gap = Math.max(gap, seqs[i] - seqs[i - 1]);
    assert.ok(seqs.length > 20, `the guest answered pings (${seqs.length} answers)`);
    const ms = done.migrationState!;
    console.log(
      `figures: migration ${source} → ${target}: ${took} ms from VMIM create to Succeeded; QEMU transfer ${Date.parse(ms.endTimestamp!) - Date.parse(ms.startTimestamp!)} ms; ` +
        `longest ping gap ${gap * 100} ms (${seqs.length} answers every 100 ms); uptime before ${before}s, first on target ${continued[0]}s`,
    );
  } finally {
    ping.kill('SIGKILL');
    capture.stop();
    wire?.kill();
    for (const w of watches) w.close();
  }
});

test(
  'vessel migrate moves it back to the named node (its old run directory there is reused); migrate-cancel without a migration says so',
  { timeout: 600_000 },
  async () => {
    const s0 = await vmiStatus();
    const source = s0.nodeName!;
    const target = c.nodes.cluster.nodes.find((n) => n.name !== source)!.name;
    // This one over plain TCP (disableTLS): the capture that saw no marker in the TLS stream sees it here.
    await c.client.patch(KUBEVIRT, 'kubevirt', { spec: { configuration: { migrations: { disableTLS: true } } } }, { namespace: 'kubevirt' });
    // The controller sees the KubeVirt object through a watch: a moment before the migration is created.
    await new Promise((r) => setTimeout(r, 2000));
    const wire = await captureStream(node(source).netns, 'fab0', MARKER);
    let r: Awaited<ReturnType<typeof run>>;
    let plain: Awaited<ReturnType<typeof onMigrationPort>>;
    try {
      r = await run(VESSEL, ['--kubeconfig', c.kubeconfig, '-n', ns, 'migrate', NAME, '--node', target], { timeoutMs: 600_000 });
      plain = await onMigrationPort(wire);
    } finally {
      wire.kill();
      await c.client.patch(KUBEVIRT, 'kubevirt', { spec: { configuration: { migrations: { disableTLS: null } } } }, { namespace: 'kubevirt' });
    }
    assert.equal(r.code, 0, `vessel migrate failed: ${r.err}`);
    assert.equal((await vmiStatus()).migrationState?.migrationConfiguration?.disableTLS, true, 'the migration ran with TLS off');
    console.log(
      `figures: plain stream on ${source}'s fab0: ${(plain.bytes / 1048576).toFixed(1)} MiB of TCP payload on port ${plain.port}, ` +
        `${plain.marked} frames there with the marker; ${plain.all.drops} dropped by the capture`,
    );
    assert.ok(plain.marked > 0, `the marker in the plain migration stream on port ${plain.port} (${JSON.stringify(plain.all)})`);
    assert.match(r.out, new RegExp(`VM ${NAME} migrated from ${source} to ${target}`));
    // Every phase, one per line, even those a poll missed.
    assert.deepEqual(
      r.err
        .trim()
        .split('\n')
        .filter((l) => !l.startsWith('memory ')) // progress lines (a line every 5 s when not a terminal)
        .map((l) => l.replace(/^\S+: (\S+).*$/, '$1')),
      ['Pending', 'Scheduling', 'Scheduled', 'PreparingTarget', 'TargetReady', 'Running', 'Succeeded'],
    );
    assert.ok(r.err.includes(`Succeeded (${source} → ${target})`), r.err);
    await eventually(`the VMI Running on ${target}`, async () => ((await vmiStatus()).nodeName === target ? true : undefined), 60_000);
    await eventually('exactly one QEMU', async () => ((await qemus()).length === 1 ? true : undefined), 30_000);
    const u0 = (await lastUptime(target)) ?? 0;
    await eventually('the guest printing its uptime on its new node', async () => (((await lastUptime(target)) ?? 0) > u0 ? true : undefined), 60_000);
    const none = await run(VESSEL, ['--kubeconfig', c.kubeconfig, '-n', ns, 'migrate-cancel', NAME]);
    assert.equal(none.code, 1);
    assert.match(none.err, /has no migration in progress/);
  },
);

test('deleting a migration while its target is being prepared aborts it: the guest stays, the target QEMU goes', { timeout: 600_000 }, async () => {
  const s0 = await vmiStatus();
  const source = s0.nodeName!;
  await migrate('move-abort');
  await eventually(
    'the migration Scheduled or PreparingTarget',
    async () => (['Scheduled', 'PreparingTarget'].includes((await vmimStatus('move-abort')).phase ?? '') ? true : undefined),
    60_000,
    20,
  );
  await c.client.delete(VMIM, 'move-abort', { namespace: ns });
  const ms = await eventually(
    'the migration failed as aborted',
    async () => {
      const st = await vmiStatus();
      return st.migrationState?.failed ? st.migrationState : undefined;
    },
    120_000,
  );
  assert.equal((ms as { abortRequested?: boolean }).abortRequested, true);
  assert.match(ms.failureReason ?? '', /abort/);
  const s1 = await vmiStatus();
  assert.equal(s1.nodeName, source);
  assert.equal(s1.phase, 'Running');
  await eventually('exactly one QEMU', async () => ((await qemus()).length === 1 ? true : undefined), 60_000);
  const u0 = (await lastUptime(source)) ?? 0;
  await eventually('the guest printing its uptime where it was', async () => (((await lastUptime(source)) ?? 0) > u0 ? true : undefined), 60_000);
  console.log(`figures: aborted migration: ${ms.failureReason}`);
});

/** Kills the VM's QEMU on `target` as soon as one launched after `t0` (ISO time) runs there (a migration's target crashing); its pid. */
async function killTargetQemu(target: string, t0: string): Promise<number> {
  return eventually(
    `the target QEMU on ${target}`,
    async () => {
      const dir = await runDirOf(agentOf(target).dataDir, ns, NAME);
      if (!dir) return undefined;
      const meta = JSON.parse(await readFile(join(dir, 'vm.json'), 'utf8').catch(() => '{}')) as { launchedAt?: string };
      const pid = Number(await readFile(join(dir, 'qemu.pid'), 'utf8').catch(() => ''));
      if (!(meta.launchedAt && meta.launchedAt > t0 && pid > 0)) return undefined;
      try {
        process.kill(pid, 'SIGKILL');
        return pid;
      } catch {
        return undefined;
      }
    },
    300_000,
    50,
  );
}

test('a migration whose target QEMU is killed fails; the guest keeps running on its node', { timeout: 600_000 }, async () => {
  const s0 = await vmiStatus();
  assert.equal(s0.phase, 'Running');
  const source = s0.nodeName!;
  const target = c.nodes.cluster.nodes.find((n) => n.name !== source)!.name;
  const t0 = new Date().toISOString();
  await migrate('move-2');
  // The target's QEMU, as soon as it runs: killed (a crash on the target).
  const killed = await killTargetQemu(target, t0);
  const done = await eventually(
    'the migration Failed',
    async () => {
      const s = await vmimStatus('move-2');
      return s.phase === 'Failed' || s.phase === 'Succeeded' ? s : undefined;
    },
    300_000,
  );
  assert.equal(done.phase, 'Failed');
  assert.match(done.migrationState?.failureReason ?? '', /./);
  const s1 = await vmiStatus();
  assert.equal(s1.nodeName, source, 'the VMI stays on its node');
  assert.equal(s1.phase, 'Running');
  assert.equal(s1.migrationState?.failed, true);
  // The guest goes on where it was; the target's QEMU is gone and only the source's runs.
  const u0 = (await lastUptime(source))!;
  await eventually('the guest still printing its uptime on its node', async () => (((await lastUptime(source)) ?? 0) > u0 + 2 ? true : undefined), 60_000);
  await eventually('exactly one QEMU', async () => ((await qemus()).length === 1 ? true : undefined), 30_000);
  console.log(`figures: failed migration (target QEMU pid ${killed} killed): ${done.migrationState?.failureReason}`);
});

test(
  'vessel drain moves the guest off its node (cordoned; a failed migration tried again), uncordon; the drain taint (nodeDrainTaintKey) moves it back',
  { timeout: 600_000 },
  async () => {
    const s0 = await vmiStatus();
    assert.equal(s0.phase, 'Running');
    const source = s0.nodeName!;
    const other = c.nodes.cluster.nodes.find((n) => n.name !== source)!.name;
    const ip = s0.interfaces?.[0]?.ipAddress;
    const t0 = Date.now();
    // The first migration's target QEMU crashes: the drain migrates again (as KubeVirt's evacuation does) and empties the node.
    const drain = run(VESSEL, ['--kubeconfig', c.kubeconfig, 'drain', source, '--timeout', '300'], { timeoutMs: 400_000 });
    await killTargetQemu(other, new Date(t0).toISOString());
    const r = await drain;
    assert.equal(r.code, 0, `vessel drain failed: ${r.err}`);
    assert.match(r.out, new RegExp(`node/${source} cordoned`));
    assert.match(r.out, new RegExp(`evicting ${ns}/${NAME} \\(live migration`));
    assert.match(r.err, new RegExp(`${ns}/${NAME}: migration \\S+ failed \\(.+\\); trying again`));
    assert.equal(r.out.match(/evicting /g)?.length, 2, 'evicted twice: the failed migration, then the retry');
    assert.match(r.out, new RegExp(`node/${source} drained`));
    const s1 = await vmiStatus();
    assert.equal(s1.nodeName, other);
    assert.equal(s1.interfaces?.[0]?.ipAddress, ip, 'the same IP');
    assert.equal(((await c.client.get(NODE, source)).spec as { unschedulable?: boolean }).unschedulable, true);
    const u0 = (await lastUptime(other)) ?? 0;
    await eventually('the guest printing its uptime on its new node', async () => (((await lastUptime(other)) ?? 0) > u0 ? true : undefined), 60_000);
    console.log(`figures: vessel drain ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const un = await run(VESSEL, ['--kubeconfig', c.kubeconfig, 'uncordon', source]);
    assert.equal(un.code, 0, un.err);
    assert.notEqual(((await c.client.get(NODE, source)).spec as { unschedulable?: boolean }).unschedulable, true);

    // The drain taint on its new node, under the key the KubeVirt object names (nodeDrainTaintKey):
    // the evacuation controller migrates it back, with an event naming that taint.
    await c.client.patch(KUBEVIRT, 'kubevirt', { spec: { configuration: { migrations: { nodeDrainTaintKey: TEST_DRAIN_KEY } } } }, { namespace: 'kubevirt' });
    await c.client.patch(NODE, other, { spec: { taints: [{ key: TEST_DRAIN_KEY, effect: 'NoSchedule' }] } });
    try {
      await eventually(
        `the VMI back on ${source}`,
        async () => {
          const st = await vmiStatus();
          return st.nodeName === source && st.migrationState?.completed ? true : undefined;
        },
        300_000,
      );
      const events = (await c.client.list({ group: '', version: 'v1', plural: 'events', namespaced: true }, { namespace: ns })).items as {
        reason?: string;
        message?: string;
        involvedObject?: { name?: string };
      }[];
      assert.ok(events.some((e) => e.reason === 'EvictionTriggered' && e.involvedObject?.name === NAME && e.message?.includes(`taint ${TEST_DRAIN_KEY}`)));
    } finally {
      await c.client.patch(NODE, other, { spec: { taints: null } });
    }
    await eventually('exactly one QEMU', async () => ((await qemus()).length === 1 ? true : undefined), 30_000);
  },
);
