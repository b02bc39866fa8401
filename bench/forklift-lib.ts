/**
 * Shared by the Forklift benchmarks (issue 14): an OVA made as the e2e tests make them (a disk →
 * streamOptimized VMDK by qemu-img, an OVF written here, a SHA256 manifest, tar), the provider and
 * maps of a source namespace, and one timed plan run (Migration created → `status.completed`).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isNotFound, type Client, type KubeObject, type ResourceRef } from '@vessel/client';
import { forkliftObject, ovf, planSpec, providerRefs } from '../packages/controllers/forklift/testdata.ts';
import { now, pollUntil, sleep } from './lib.ts';

const ref = (plural: string, group = 'forklift.konveyor.io', version = 'v1beta1'): ResourceRef => ({ group, version, plural, namespaced: true });
export const PROVIDERS = ref('providers');
export const NETMAPS = ref('networkmaps');
export const STORAGEMAPS = ref('storagemaps');
export const PLANS = ref('plans');
export const MIGRATIONS = ref('migrations');
export const VMS = ref('virtualmachines', 'kubevirt.io', 'v1');
export const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };

/** Runs a command (argv, no shell); rejects with its stderr on a non-zero exit. */
export function sh(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim()}`))));
  });
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return h.digest('hex');
}

/**
 * `<root>/<name>.ova` holding `<name>.ovf`, `<name>.mf` (SHA256 of both other members) and
 * `<name>-disk1.vmdk`, the streamOptimized conversion of `disk` (any format qemu-img reads).
 * The VMDK is left in `work` (the baseline converts it); returns its path.
 */
export async function makeOva(opts: {
  root: string;
  work: string;
  name: string;
  disk: string;
  diskFormat: string;
  capacity: number;
  vmdk?: string;
}): Promise<string> {
  const dir = join(opts.work, opts.name);
  await mkdir(dir, { recursive: true });
  const file = `${opts.name}-disk1.vmdk`;
  const vmdk = join(dir, file);
  if (opts.vmdk) await sh('cp', [opts.vmdk, vmdk]);
  else await sh('qemu-img', ['convert', '-f', opts.diskFormat, '-O', 'vmdk', '-o', 'subformat=streamOptimized', opts.disk, vmdk]);
  const desc = ovf([{ name: opts.name, cpus: 1, memoryMB: 256, networks: ['VM Network'], disks: [{ file, capacity: opts.capacity }] }]);
  await writeFile(join(dir, `${opts.name}.ovf`), desc);
  const mf = `SHA256(${opts.name}.ovf)= ${createHash('sha256').update(desc).digest('hex')}\nSHA256(${file})= ${await sha256File(vmdk)}\n`;
  await writeFile(join(dir, `${opts.name}.mf`), mf);
  await sh('tar', ['-cf', join(opts.root, `${opts.name}.ova`), '-C', dir, `${opts.name}.ovf`, `${opts.name}.mf`, file]);
  return vmdk;
}

/** An `ova` Provider over `root`, a NetworkMap (VM Network → pod) and a StorageMap (each package → `local`), all Ready. */
export async function setUpSource(client: Client, ns: string, root: string, packages: string[]): Promise<void> {
  const refs = providerRefs('ova', ns);
  await client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
  await client.create(PROVIDERS, forkliftObject('Provider', 'ova', ns, { type: 'ova', url: root, secret: {} }), { namespace: ns });
  await client.create(
    NETMAPS,
    forkliftObject('NetworkMap', 'net', ns, { provider: refs, map: [{ source: { name: 'VM Network' }, destination: { type: 'pod' } }] }),
    { namespace: ns },
  );
  const storage = packages.map((p) => ({ source: { name: p }, destination: { storageClass: 'local' } }));
  await client.create(STORAGEMAPS, forkliftObject('StorageMap', 'disks', ns, { provider: refs, map: storage }), { namespace: ns });
  for (const [res, name] of [
    [PROVIDERS, 'ova'],
    [NETMAPS, 'net'],
    [STORAGEMAPS, 'disks'],
  ] as const)
    await pollUntil(`${name} Ready`, async () => (isReady(await client.get(res, name, { namespace: ns })) ? true : undefined), 300_000, 100);
}

type Cond = { type: string; status: string };
const isReady = (o: KubeObject) => ((o.status as { conditions?: Cond[] } | undefined)?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');

export interface PlanRun {
  /** Migration created → its `status.completed` seen (polled every 50 ms). */
  ms: number;
  migration: KubeObject;
}

/**
 * Makes Plan `name` (its VMs into `target`, created here), waits for it Ready (not timed), then
 * creates its Migration and times it to `status.completed`. Rejects when a VM failed.
 */
export async function runPlan(client: Client, ns: string, name: string, target: string, vms: string[], timeoutMs: number): Promise<PlanRun> {
  await client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: target } });
  await client.create(
    PLANS,
    forkliftObject(
      'Plan',
      name,
      ns,
      // The figure is the disk's import: with virt-v2v on the host the plan would also convert the
      // guest, and the benchmarks' synthetic disks have no OS for it to find (it fails).
      planSpec({ provider: providerRefs('ova', ns), targetNamespace: target, vms: vms.map((v) => ({ name: v })) }, { skipGuestConversion: true }),
    ),
    { namespace: ns },
  );
  await pollUntil(`plan ${name} Ready`, async () => (isReady(await client.get(PLANS, name, { namespace: ns })) ? true : undefined), 120_000, 100);
  const t0 = now();
  await client.create(MIGRATIONS, forkliftObject('Migration', name, ns, { plan: { name, namespace: ns } }), { namespace: ns });
  const deadline = t0 + timeoutMs;
  for (;;) {
    const m = await client.get(MIGRATIONS, name, { namespace: ns });
    const st = m.status as { completed?: string; vms?: { name: string; phase: string; error?: { reasons?: string[] } }[] } | undefined;
    if (st?.completed) {
      const ms = now() - t0;
      const failed = (st.vms ?? []).filter((v) => v.phase !== 'Completed');
      if (failed.length) throw new Error(`plan ${name}: ${failed.map((v) => `${v.name} ${v.phase}: ${v.error?.reasons?.join('; ') ?? ''}`).join(', ')}`);
      return { ms, migration: m };
    }
    if (now() > deadline) throw new Error(`plan ${name}: not completed within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Deletes a plan run's target namespace's VMs and DataVolumes (so their volume files go) and waits for the claims to be gone. */
export async function cleanTarget(client: Client, target: string, timeoutMs: number): Promise<void> {
  const DVS: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
  const PVCS: ResourceRef = { group: '', version: 'v1', plural: 'persistentvolumeclaims', namespaced: true };
  const ignoreGone = (e: unknown) => {
    if (!isNotFound(e)) throw e;
  };
  for (const vm of (await client.list(VMS, { namespace: target })).items)
    await client.delete(VMS, vm.metadata?.name ?? '', { namespace: target }).catch(ignoreGone);
  for (const dv of (await client.list(DVS, { namespace: target })).items)
    await client.delete(DVS, dv.metadata?.name ?? '', { namespace: target }).catch(ignoreGone);
  await pollUntil(
    `claims of ${target} deleted`,
    async () => ((await client.list(PVCS, { namespace: target })).items.length === 0 ? true : undefined),
    timeoutMs,
    100,
  );
}

/** Removes a directory tree (the GiB files); never throws. */
export async function removeTree(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true }).catch(() => undefined);
}
