/**
 * `vessel image create NAME --from-snapshot S` publishes a disk of a VirtualMachineSnapshot
 * as a golden image: a standalone copy (`qemu-img convert`, which leaves out unallocated and
 * zero clusters) in a claim NAME, and a DataSource NAME pointing at it, in the current
 * namespace or, with -n vessel-images, for every tenant, as CNStack's image service does.
 * `--from-vm VM` takes a snapshot of the VM first and removes it afterwards; with --sparsify
 * the guest agent of a running VM first trims the guest's free space (guest-fstrim), so blocks
 * of deleted files read as zeros and the copy leaves them out.
 */
import type { Command } from 'commander';
import { isNotFound, type Client, type KubeObject } from '@vessel/client';
import { findByResource, snapshots, storage } from '@vessel/api';
import { contextOf, note, out } from '../context.ts';
import { UsageError } from '../errors.ts';
import { createSnapshot, sparsified, waitFor, waitForSnapshot } from './snapshot.ts';

const SNAPSHOTS = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshots')!;
const CONTENTS = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshotcontents')!;
const PVCS = findByResource('', 'v1', 'persistentvolumeclaims')!;
const DATASOURCES = findByResource('cdi.kubevirt.io', 'v1beta1', 'datasources')!;
type Obj = Record<string, unknown>;

interface Flags {
  fromSnapshot?: string;
  fromVm?: string;
  snapshotNamespace?: string;
  volume?: string;
  sparsify?: boolean;
  timeout: string;
}

export function registerImage(program: Command): void {
  const image = program.command('image').description('golden images (DataSources) made from VMs');
  image
    .command('create')
    .description('publish a disk of a VM snapshot (or of a stopped VM) as a DataSource')
    .argument('<name>', 'name of the new DataSource and its claim')
    .option('--from-snapshot <snapshot>', 'the VirtualMachineSnapshot to take the disk from')
    .option('--from-vm <vm>', 'snapshot this VM (stopped or running) and take the disk from that')
    .option('--snapshot-namespace <ns>', 'namespace of the snapshot or VM (default: the current one)')
    .option('--volume <name>', "which of the VM's disks (default: the first)")
    .option('--sparsify', 'with --from-vm of a running VM: have its guest agent trim the free space first, so the image leaves it out')
    .option('--timeout <seconds>', 'how long to wait', '600')
    .action(async (name: string, flags: Flags, cmd: Command) => {
      if (!!flags.fromSnapshot === !!flags.fromVm) throw new UsageError('give exactly one of --from-snapshot SNAPSHOT or --from-vm VM');
      // What a snapshot holds is fixed when it is taken; sparsifying is done in the guest before.
      if (flags.sparsify && flags.fromSnapshot)
        throw new UsageError(
          '--sparsify needs --from-vm VM: the guest trims its free space before the snapshot is taken (take one with vessel snapshot VM NAME --sparsify)',
        );
      const ctx = contextOf(cmd);
      const client = ctx.client();
      const ns = ctx.namespace();
      const srcNs = flags.snapshotNamespace ?? ns;
      const timeoutMs = Number(flags.timeout) * 1000;
      let snapshot = flags.fromSnapshot!;
      if (flags.fromVm) {
        snapshot = `image-${name}-${Date.now().toString(36)}`;
        await createSnapshot(client, srcNs, snapshot, flags.fromVm, { sparsify: flags.sparsify });
      }
      try {
        const snap = await waitForSnapshot(client, srcNs, snapshot, timeoutMs);
        if (flags.sparsify) note(await sparsified(client, snap));
        await publishImage(client, snap, srcNs, ns, name, flags.volume, timeoutMs);
        out(`datasource.cdi.kubevirt.io/${name} created in ${ns}: use it with sourceRef {kind: DataSource, name: ${name}, namespace: ${ns}}\n`);
      } finally {
        if (flags.fromVm) await client.delete(SNAPSHOTS, snapshot, { namespace: srcNs }).catch((e: unknown) => leftBehind(e, srcNs, snapshot));
      }
    });
}

async function publishImage(
  client: Client,
  snap: KubeObject,
  srcNs: string,
  ns: string,
  name: string,
  volume: string | undefined,
  timeoutMs: number,
): Promise<void> {
  const contentName = String((snap.status as Obj).virtualMachineSnapshotContentName);
  const content = await client.get(CONTENTS, contentName, { namespace: srcNs });
  const backups = ((content.spec as Obj).volumeBackups as { volumeName: string; persistentVolumeClaim: { spec: Obj } }[] | undefined) ?? [];
  const backup = volume ? backups.find((b) => b.volumeName === volume) : backups[0];
  if (!backup)
    throw new UsageError(`snapshot ${snap.metadata?.name} has no disk ${volume ?? ''}: it has ${backups.map((b) => b.volumeName).join(', ') || 'none'}`);
  const ann = (content.metadata?.annotations ?? {}) as Record<string, string>;
  const file = (JSON.parse(ann[snapshots.SNAPSHOT_FILES] ?? '{}') as Record<string, string>)[backup.volumeName];
  const claim = backup.persistentVolumeClaim.spec as { resources?: Obj; storageClassName?: string };
  await client.create(
    PVCS,
    {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: {
        name,
        namespace: ns,
        annotations: { [storage.RESTORE_SOURCE]: file, [storage.SELECTED_NODE]: ann[snapshots.SNAPSHOT_NODE], [storage.CLONE_TYPE]: 'full' },
      },
      spec: { accessModes: ['ReadWriteOnce'], resources: claim.resources, storageClassName: claim.storageClassName },
    },
    { namespace: ns },
  );
  note(`copying disk ${backup.volumeName} of snapshot ${snap.metadata?.name} into ${ns}/${name}...\n`);
  await waitFor(client, PVCS, ns, name, timeoutMs, (s) => s.phase === 'Bound');
  await client.create(
    DATASOURCES,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataSource',
      metadata: { name, namespace: ns },
      spec: { source: { pvc: { name, namespace: ns } } },
    },
    { namespace: ns },
  );
}

/** Cleanup in a finally must not hide the command's own outcome, but a snapshot left behind is worth a line. */
function leftBehind(e: unknown, ns: string, name: string): void {
  if (!isNotFound(e)) note(`could not delete the temporary snapshot ${ns}/${name} (delete it by hand): ${e instanceof Error ? e.message : e}\n`);
}
