/**
 * Live migration of a node-local disk (issue 13, vms/block-migration.ts) under TCG: a tiny
 * guest on a two-node dev cluster with a data disk on the local pool holding N GiB of data
 * (written with qemu-io before the guest starts) migrates to the other node (NBD mirror over the
 * fabric, TLS: the default, then the memory). Baseline: the same disk copied by hand with
 * `qemu-img convert` into a `qemu-nbd` export (plain TCP on loopback) of a blank qcow2 of the
 * same size. The ratio is the migration's transfer time (migrationState end − start: mirror,
 * memory, switch) over the copy's, with the raw figures; then the VM migrates back with both
 * agents restarted with migration TLS off, for TLS / plain on the same disk.
 *
 *   node --import tsx bench/migration-disk.bench.ts    # env BENCH_MIG_DISK_GIB (default 1)
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ResourceRef } from '@vessel/client';
import { run, startCluster, type TestCluster } from '../e2e/harness.ts';
import { tinyVm } from '../e2e/tiny-vm.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { envInt, fmtRatio, loadLine, pollUntil, ratio } from './lib.ts';

const until = <T>(fn: () => Promise<T | undefined>, ms: number, what: string): Promise<T> => pollUntil(what, fn, ms);

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
const PVC: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
const ns = 'default';
const NAME = 'bench-disk';
const DATA = `${NAME}-data`;
const GIB = envInt('BENCH_MIG_DISK_GIB', 1);
type Status = { phase?: string; nodeName?: string; migrationState?: { startTimestamp?: string; endTimestamp?: string; failureReason?: string } };

async function must(cmd: string, args: string[]): Promise<void> {
  const r = await run(cmd, args, { timeoutMs: 1_800_000 });
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.err}`);
}

/** Baseline: qemu-img convert of `file` into a qemu-nbd export of a blank qcow2 of the same size; ms. */
async function baseline(file: string, dir: string): Promise<number> {
  const dest = join(dir, 'dest.qcow2');
  await must('qemu-img', ['create', '-q', '-f', 'qcow2', dest, `${GIB}G`]);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const nbd = spawn('qemu-nbd', ['-t', '-f', 'qcow2', '-p', String(port), '-b', '127.0.0.1', '-x', 'data', dest], { stdio: 'ignore' });
  try {
    await until(async () => ((await run('qemu-img', ['info', `nbd://127.0.0.1:${port}/data`])).code === 0 ? true : undefined), 30_000, 'qemu-nbd');
    const t0 = Date.now();
    await must('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', '-U', file, `nbd://127.0.0.1:${port}/data`]);
    return Date.now() - t0;
  } finally {
    nbd.kill('SIGTERM');
  }
}

async function main(): Promise<void> {
  let c: TestCluster | undefined;
  const dir = await mkdtemp(join(tmpdir(), 'vessel-bench-disk-'));
  try {
    c = await startCluster({ nodes: 2 });
    const client = c.client;
    await ensureTinyImage(client, () => undefined, { storageClass: 'shared' });
    // The data disk first: bound on a node's local pool, filled, then the guest starts with it there.
    await client.create(
      DV,
      {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataVolume',
        metadata: { name: DATA, namespace: ns },
        spec: { source: { blank: {} }, storage: { storageClassName: 'local', resources: { requests: { storage: `${GIB}Gi` } } } },
      },
      { namespace: ns },
    );
    const file = await until(
      async () => {
        const p = await client.get(PVC, DATA, { namespace: ns }).catch(() => undefined);
        return (p?.status as { phase?: string } | undefined)?.phase === 'Bound' ? p?.metadata?.annotations?.['vessel.io/volume-path'] : undefined;
      },
      120_000,
      'the data claim Bound',
    );
    const t0 = Date.now();
    // 1 GiB per request: qemu-io refuses a single request over 2 GiB.
    await must('qemu-io', ['-f', 'qcow2', ...Array.from({ length: GIB }, (_, k) => ['-c', `write -P 0xa5 ${k}G 1G`]).flat(), file]);
    console.log(`filled ${GIB} GiB in ${Date.now() - t0} ms`);
    const base = await baseline(file, dir);
    console.log(`qemu-img convert into a qemu-nbd export: ${base} ms`);
    const vm = tinyVm(NAME, { namespace: ns, binding: 'bridge', storageClass: 'shared', terminationGracePeriodSeconds: 5 }) as {
      spec: { template: { spec: { domain: { devices: { disks: object[] } }; volumes: object[] } } };
    };
    vm.spec.template.spec.domain.devices.disks.push({ name: 'data', disk: { bus: 'virtio' } });
    vm.spec.template.spec.volumes.push({ name: 'data', dataVolume: { name: DATA } });
    await client.create(VM, vm as never, { namespace: ns });
    const status = async () => ((await client.get(VMI, NAME, { namespace: ns }).catch(() => undefined))?.status ?? {}) as Status;
    await until(async () => ((await status()).phase === 'Running' ? true : undefined), 300_000, 'the VMI Running');
    await new Promise((r) => setTimeout(r, 5000));
    // Migrates the VMI once; its transfer time (migrationState end − start) in ms.
    const migrate = async (name: string): Promise<number> => {
      await client.create(
        VMIM,
        { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: ns }, spec: { vmiName: NAME } },
        { namespace: ns },
      );
      const done = await until(
        async () => {
          const s = ((await client.get(VMIM, name, { namespace: ns })).status ?? {}) as Status & { phase?: string };
          return s.phase === 'Succeeded' || s.phase === 'Failed' ? s : undefined;
        },
        1_800_000,
        'the migration',
      );
      if (done.phase !== 'Succeeded') throw new Error(`the migration failed: ${done.migrationState?.failureReason}`);
      const vmi = await status();
      return Date.parse(vmi.migrationState!.endTimestamp!) - Date.parse(vmi.migrationState!.startTimestamp!);
    };
    const mig = await migrate('bench-disk-1');
    console.log(`local-disk migration (${GIB} GiB of data, NBD mirror over TLS + memory): ${mig} ms`);
    // Back over plain TCP: both agents restart with migration TLS off (the guest's QEMU runs on).
    for (let i = 0; i < c.nodes.agents.length; i++) await c.nodes.restartAgent(i, { migrationTls: false });
    await new Promise((r) => setTimeout(r, 3000));
    const plain = await migrate('bench-disk-2');
    console.log(`local-disk migration back (the same disk, TLS off): ${plain} ms`);
    console.log(`qemu-img convert into a qemu-nbd export (plain TCP, loopback): ${base} ms`);
    console.log(
      `migration / raw copy: ${fmtRatio(ratio(mig, base))}; without TLS: ${fmtRatio(ratio(plain, base))}; TLS / plain: ${fmtRatio(ratio(mig, plain))}  [${loadLine()}]`,
    );
  } finally {
    await c?.client.delete(VM, NAME, { namespace: ns }).catch(() => undefined);
    if (c) {
      const cl = c.client;
      await until(async () => ((await cl.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 60_000, 'the VMI gone').catch(() => undefined);
      await c.close();
    }
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(`PROBLEM: ${e instanceof Error ? e.message : String(e)}`);
  process.exitCode = 1;
});
