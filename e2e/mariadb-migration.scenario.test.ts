/**
 * Scenario (issue 13, "A guest for real workloads"): a Debian guest writes to MariaDB on an
 * outside host while it is live-migrated 5 times around a 3-node dev cluster. MariaDB
 * (Debian's mariadb-server, its own mariadbd, datadir, socket and port under a temp dir) runs in
 * the dev cluster's fabric namespace on DevCluster.outsideIp: the world outside the cluster. The
 * guest (root disk on the shared pool, evictionStrategy LiveMigrate, #cloud-config user data)
 * inserts a numbered row every 100 ms over one connection, reconnecting on error; a tiny guest
 * pings it every 10 ms. Asserts no row lost or duplicated; prints the longest gap between
 * inserts (server timestamps), the longest ping gap and the reconnects. Minutes under TCG: a
 * scenario (`bash scripts/test.sh --scenarios`), not CI.
 *
 * VESSEL_SCENARIO_POSTCOPY=1: the KubeVirt object allows post-copy, so under TCG each migration
 * pauses the guest and goes to post-copy at once (mode PostCopy) instead of copying all of its
 * memory paused (mode Paused):
 *   VESSEL_SCENARIO_POSTCOPY=1 bash scripts/test.sh e2e/mariadb-migration.scenario.test.ts
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { NO_QEMU_PRIORITY } from '@vessel/agent';
import type { ResourceRef } from '@vessel/client';
import { ensureDebianImage, ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, run, startCluster, type TestCluster } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const ns = 'default';
const DB_VM = 'dbclient';
const PINGER = 'pinger';
const MIGRATIONS = 5;
/** Post-copy allowed (docs/migration.md "TCG: the guest pauses for the transfer"). */
const POSTCOPY = process.env.VESSEL_SCENARIO_POSTCOPY === '1';
const KV: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'kubevirts', namespaced: true };
const VESSEL = fileURLToPath(new URL('../bin/vessel', import.meta.url));
type Obj = Record<string, unknown>;
type VmiStatus = {
  phase?: string;
  nodeName?: string;
  interfaces?: { ipAddress?: string }[];
  migrationState?: { startTimestamp?: string; endTimestamp?: string; mode?: string };
};

const log = (s: string) => console.log(`[mariadb-scenario] ${s}`);
let c: TestCluster | undefined;
let tmp = '';
let mariadbd: ChildProcess | undefined;
let sock = '';
let key = '';

/** The guest's writer (one long-lived mariadb client; resumes after MAX(n) on a new connection). */
const INSERTER = fileURLToPath(new URL('./mariadb-inserter.sh', import.meta.url));

function debianVm(pub: string, outsideIp: string, inserter: string): Obj {
  // #cloud-config: the inserter in write_files, root's key, runcmd starts it (Vessel's cloud-init subset in the guest).
  const userData = [
    '#cloud-config',
    'ssh_authorized_keys:',
    `  - ${pub}`,
    'write_files:',
    '  - path: /usr/local/bin/inserter',
    "    permissions: '0755'",
    '    content: |',
    ...inserter.split('\n').map((l) => (l ? `      ${l}` : '')),
    'runcmd:',
    `  - /usr/local/bin/inserter ${outsideIp}`,
    '',
  ].join('\n');
  const vm = tinyVm(DB_VM, {
    namespace: ns,
    binding: 'bridge',
    userData,
    storageClass: 'shared',
    memory: '512Mi',
    terminationGracePeriodSeconds: 5,
    evictionStrategy: 'LiveMigrate',
  }) as { spec: { dataVolumeTemplates: { spec: { sourceRef: { name: string }; storage: { resources: { requests: { storage: string } } } } }[] } };
  vm.spec.dataVolumeTemplates[0].spec.sourceRef.name = 'debian';
  vm.spec.dataVolumeTemplates[0].spec.storage.resources.requests.storage = '3Gi';
  return vm as unknown as Obj;
}

/**
 * Pings every 10 ms once the address answers (the script runs before DHCP; busybox ping exits on
 * an unreachable network, and is started again); every 500 answers a line with the largest jump
 * of sequence numbers (x 10 ms = the gap).
 */
const pingerData = (ip: string) =>
  `#!/bin/sh\n( (until ping -c 1 -W 1 ${ip} >/dev/null 2>&1; do sleep 1; done; while true; do ping -i 0.01 ${ip}; sleep 0.2; done) 2>&1 | ` +
  `awk '/seq=/ { s = $0; sub(/.*seq=/, "", s); sub(/ .*/, "", s); s += 0; if (last != "" && s < last) last = ""; ` +
  `if (last != "" && s - last > max) max = s - last; if (last != "" && s - last > 1) lost += s - last - 1; last = s; ` +
  `if (++c % 500 == 0) { printf "VESSEL-PING answers=%d lost=%d maxgap=%d\\n", c, lost, max; fflush() } }') &\n`;

async function sql(query: string): Promise<string> {
  const r = await run('mariadb', ['--no-defaults', '-S', sock, '-u', 'root', '--batch', '--skip-column-names', '-e', query], { timeoutMs: 30_000 });
  assert.equal(r.code, 0, r.err);
  return r.out;
}

async function startMariadb(netns: string, ip: string): Promise<void> {
  if (
    !(await access('/usr/sbin/mariadbd').then(
      () => true,
      () => false,
    ))
  ) {
    // Debian's package; a policy-rc.d that says no keeps the host's own service from starting.
    const policy = '/usr/sbin/policy-rc.d';
    const made = !(await access(policy).then(
      () => true,
      () => false,
    ));
    if (made) await run('sh', ['-c', `printf '#!/bin/sh\\nexit 101\\n' >${policy} && chmod 755 ${policy}`]);
    try {
      const r = await run('apt-get', ['install', '-y', '--no-install-recommends', 'mariadb-server'], {
        timeoutMs: 600_000,
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      });
      assert.equal(r.code, 0, r.err);
    } finally {
      if (made) await rm(policy, { force: true });
    }
  }
  const data = join(tmp, 'mariadb');
  sock = join(tmp, 'mariadb.sock');
  const init = await run(
    'mariadb-install-db',
    ['--no-defaults', `--datadir=${data}`, '--user=root', '--skip-test-db', '--auth-root-authentication-method=socket'],
    {
      timeoutMs: 300_000,
    },
  );
  assert.equal(init.code, 0, init.err);
  mariadbd = spawn(
    'ip',
    [
      'netns',
      'exec',
      netns,
      'mariadbd',
      '--no-defaults',
      `--datadir=${data}`,
      `--socket=${sock}`,
      '--port=3306',
      `--bind-address=${ip}`,
      `--pid-file=${join(tmp, 'mariadb.pid')}`,
      '--user=root',
      '--skip-name-resolve',
      `--log-error=${join(tmp, 'mariadb.err')}`,
      '--innodb-buffer-pool-size=64M',
    ],
    { stdio: 'ignore' },
  );
  await eventually(
    'mariadbd answering on its socket',
    async () => ((await run('mariadb', ['--no-defaults', '-S', sock, '-u', 'root', '-e', 'SELECT 1'])).code === 0 ? true : undefined),
    120_000,
    500,
  );
  await sql(
    "CREATE DATABASE vessel; CREATE USER 'vessel'@'%' IDENTIFIED BY 'vessel'; GRANT ALL ON vessel.* TO 'vessel'@'%'; " +
      'CREATE TABLE vessel.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, n INT NOT NULL, conn BIGINT NOT NULL, ts DATETIME(6) NOT NULL, KEY (n));',
  );
}

const vmiStatus = async (name: string) => ((await c!.client.get(VMI, name, { namespace: ns }).catch(() => undefined))?.status ?? {}) as VmiStatus;
/** The guest's serial output on every node it ran on. */
async function serialEverywhere(name: string): Promise<string> {
  let all = '';
  for (const a of c!.nodes.agents) all += await serialLog(a.dataDir, ns, name);
  return all;
}

async function vessel(args: string[], timeoutMs = 120_000) {
  return run(VESSEL, ['--kubeconfig', c!.kubeconfig, ...args], { timeoutMs });
}
const sshArgs = () => [
  'ssh',
  '-i',
  key,
  '--local-ssh-opts=-oStrictHostKeyChecking=no',
  '--local-ssh-opts=-oUserKnownHostsFile=/dev/null',
  '--local-ssh-opts=-oBatchMode=yes',
];

before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'vessel-mariadb-'));
  // QEMU at the agent's own priority: on a machine shared with other test runs, niced guests
  // (the default) starve, and the gaps measured would be the machine's, not the migration's.
  // Each migration's pause taken apart (QEMU's event times, migration-timeline.ts) goes to the output.
  c = await startCluster({ nodes: 3, qemuPriority: NO_QEMU_PRIORITY, nodeLog: (l) => void (l.includes(': timeline ') && log(l)) });
  await startMariadb(c.nodes.cluster.fabricNetns, c.nodes.cluster.outsideIp);
  key = join(tmp, 'id_ed25519');
  assert.equal((await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'vessel-scenario', '-f', key])).code, 0);
  await ensureTinyImage(c.client, log, { storageClass: 'shared' });
  await ensureDebianImage(c.client, log, { storageClass: 'shared' });
});

let cleaned = false;
async function cleanup(): Promise<void> {
  if (cleaned) return;
  cleaned = true;
  if (c) {
    for (const name of [DB_VM, PINGER]) await c.client.delete(VM, name, { namespace: ns }).catch(() => undefined);
    await eventually('the VMIs gone', async () => ((await c!.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 120_000).catch(
      () => undefined,
    );
    await c.close();
  }
  if (mariadbd?.pid) {
    mariadbd.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 3000));
    mariadbd.kill('SIGKILL');
  }
  if (tmp) await rm(tmp, { recursive: true, force: true });
}
after(cleanup);
// An interrupted run (Ctrl-C, a timeout's SIGTERM) still removes its namespaces, QEMUs and mariadbd.
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => void cleanup().finally(() => process.exit(130)));

test('MariaDB rows from a Debian guest live-migrated 5 times: none lost or duplicated', { timeout: 3_600_000 }, async () => {
  const cl = c!;
  const pub = (await readFile(`${key}.pub`, 'utf8')).trim();
  if (POSTCOPY) await cl.client.patch(KV, 'kubevirt', { spec: { configuration: { migrations: { allowPostCopy: true } } } }, { namespace: 'kubevirt' });
  const created = Date.now();
  await cl.client.create(VM, debianVm(pub, cl.nodes.cluster.outsideIp, await readFile(INSERTER, 'utf8')), { namespace: ns });
  const running = await eventually(
    'the Debian VMI Running with its IP',
    async () => {
      const s = await vmiStatus(DB_VM);
      return s.phase === 'Running' && s.interfaces?.[0]?.ipAddress ? s : undefined;
    },
    900_000,
    1000,
  );
  const ip = running.interfaces![0].ipAddress!;
  await eventually(
    'VESSEL-GUEST-READY from the Debian guest',
    async () => ((await serialEverywhere(DB_VM)).includes('VESSEL-GUEST-READY') ? true : undefined),
    900_000,
    1000,
  );
  log(`Debian guest ready ${((Date.now() - created) / 1000).toFixed(1)} s after the VM was created (IP ${ip}, node ${running.nodeName})`);
  const ssh = await eventually(
    'vessel ssh into the Debian guest',
    async () => {
      const r = await vessel([...sshArgs(), '-c', 'mariadb --version; systemctl is-system-running; cat /etc/debian_version', `root@vm/${DB_VM}`], 120_000);
      return r.code === 0 ? r : undefined;
    },
    600_000,
    3000,
  );
  log(`vessel ssh ${((Date.now() - created) / 1000).toFixed(1)} s after creation: ${ssh.out.trim().replace(/\n/g, ' | ')}`);
  await eventually(
    'rows arriving in MariaDB',
    async () => (Number((await sql('SELECT COUNT(*) FROM vessel.t')).trim()) >= 20 ? true : undefined),
    600_000,
    1000,
  );

  await cl.client.create(VM, tinyVm(PINGER, { namespace: ns, binding: 'bridge', userData: pingerData(ip), terminationGracePeriodSeconds: 5 }), {
    namespace: ns,
  });
  await eventually('the pinger pinging', async () => (/VESSEL-PING /.test(await serialEverywhere(PINGER)) ? true : undefined), 600_000, 1000);

  const nodes = cl.nodes.cluster.nodes.map((n) => n.name);
  let at = running.nodeName!;
  const transfers: string[] = [];
  /** Each migration's time span (this host's clock, as the server's timestamps): its created → Succeeded, plus 3 s. */
  const windows: [number, number][] = [];
  const failedTries: string[] = [];
  for (let m = 1; m <= MIGRATIONS; m++) {
    const to = nodes[(nodes.indexOf(at) + 1) % nodes.length];
    // A failed try (the machine is shared, TCG is slow) is reported and tried again, at most 3 times.
    const t0 = Date.now();
    let tries = 0;
    for (;;) {
      const name = `move-${m}-${++tries}`;
      await cl.client.create(
        VMIM,
        {
          apiVersion: 'kubevirt.io/v1',
          kind: 'VirtualMachineInstanceMigration',
          metadata: { name, namespace: ns, annotations: { 'vessel.io/migration-target-node': to } },
          spec: { vmiName: DB_VM },
        },
        { namespace: ns },
      );
      const end = await eventually(
        `migration ${m} ${at} → ${to}`,
        async () => {
          const s = ((await cl.client.get(VMIM, name, { namespace: ns })).status ?? {}) as { phase?: string; migrationState?: { failureReason?: string } };
          return s.phase === 'Succeeded' || s.phase === 'Failed' ? s : undefined;
        },
        900_000,
        500,
      );
      if (end.phase === 'Succeeded') break;
      failedTries.push(`${name} ${at}→${to}: ${end.migrationState?.failureReason}`);
      log(`migration ${name} failed: ${end.migrationState?.failureReason}`);
      assert.ok(tries < 3, `migration ${m} failed 3 times: ${failedTries.join('; ')}`);
      await new Promise((r) => setTimeout(r, 5000));
    }
    windows.push([t0 / 1000, Date.now() / 1000 + 3]);
    const st = await vmiStatus(DB_VM);
    assert.equal(st.nodeName, to);
    const ms = st.migrationState;
    const transfer = ms?.startTimestamp && ms.endTimestamp ? (Date.parse(ms.endTimestamp) - Date.parse(ms.startTimestamp)) / 1000 : NaN;
    transfers.push(`${at}→${to} ${transfer.toFixed(1)} s, mode ${ms?.mode} (created→Succeeded ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    if (POSTCOPY) assert.notEqual(ms?.mode, 'Paused', 'post-copy allowed: never the whole memory paused');
    log(`migration ${m}: ${transfers.at(-1)}, Succeeded at ${new Date().toISOString()}`);
    at = to;
    await new Promise((r) => setTimeout(r, 10_000));
  }
  // The guest still answers on its last node and the rows go on.
  const before5 = Number((await sql('SELECT MAX(n) FROM vessel.t')).trim());
  await eventually(
    'rows still arriving',
    async () => (Number((await sql('SELECT MAX(n) FROM vessel.t')).trim()) >= before5 + 20 ? true : undefined),
    120_000,
    1000,
  );
  const ssh2 = await vessel([...sshArgs(), '-c', 'hostname; uptime', `root@vm/${DB_VM}`], 120_000);
  assert.equal(ssh2.code, 0, ssh2.err);
  log(`vessel ssh after the migrations (node ${at}): ${ssh2.out.trim().replace(/\n/g, ' | ')}`);

  const rows = (await sql('SELECT n, conn, UNIX_TIMESTAMP(ts) FROM vessel.t ORDER BY n, id'))
    .trim()
    .split('\n')
    .map((l) => l.split('\t'))
    .map(([n, conn, ts]) => ({ n: Number(n), conn: Number(conn), ts: Number(ts) }));
  const max = rows.at(-1)!.n;
  const seen = new Map<number, number>();
  for (const r of rows) seen.set(r.n, (seen.get(r.n) ?? 0) + 1);
  const lost = [...Array(max).keys()].map((i) => i + 1).filter((n) => !seen.has(n));
  const dup = [...seen].filter(([, k]) => k > 1).map(([n]) => n);
  let gap = 0;
  let gapAt = 0;
  for (let i = 1; i < rows.length; i++) {
    if (rows[i].ts - rows[i - 1].ts > gap) {
      gap = rows[i].ts - rows[i - 1].ts;
      gapAt = rows[i].n;
    }
  }
  // The longest insert gap within each migration's span (a gap counts where its later row is).
  const perMigration = windows.map(([from, to]) => {
    let g = 0;
    for (let i = 1; i < rows.length; i++) if (rows[i].ts >= from && rows[i].ts <= to) g = Math.max(g, rows[i].ts - rows[i - 1].ts);
    return `${(g * 1000).toFixed(0)} ms`;
  });
  const conns = new Set(rows.map((r) => r.conn)).size;
  const serial = await serialEverywhere(DB_VM);
  const connects = [...serial.matchAll(/VESSEL-DB-CONNECT (\d+)/g)].length;
  const pings = [...(await serialEverywhere(PINGER)).matchAll(/VESSEL-PING answers=(\d+) lost=(\d+) maxgap=(\d+)/g)].map((x) => x.slice(1).map(Number));
  const [answers, pingLost, pingGap] = pings.at(-1) ?? [0, 0, 0];
  log(`migrations: ${transfers.join('; ')}`);
  log(`failed migration tries (retried): ${failedTries.length}${failedTries.length ? ` (${failedTries.join('; ')})` : ''}`);
  log(`rows: ${rows.length} (n 1..${max}), lost ${lost.length}, duplicated ${dup.length}`);
  const gapEnd = rows.find((r) => r.n === gapAt)?.ts ?? 0;
  log(
    `longest gap between consecutive inserts: ${(gap * 1000).toFixed(0)} ms (before row ${gapAt}, which the server wrote at ${new Date(gapEnd * 1000).toISOString()})`,
  );
  log(`longest insert gap per migration: ${perMigration.join(', ')}`);
  log(`connections used: ${conns} (reconnects ${conns - 1}); VESSEL-DB-CONNECT lines ${connects}`);
  log(`pings: ${answers} answered, ${pingLost} lost, longest gap ~${pingGap * 10} ms (${pingGap} x 10 ms)`);
  assert.deepEqual(lost, [], 'no row lost');
  assert.deepEqual(dup, [], 'no row duplicated');
});
