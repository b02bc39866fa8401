/**
 * `vessel addvolume VM --volume-name=NAME [--persist]`, virtctl's addvolume: hotplugs a
 * DataVolume or PersistentVolumeClaim into a running VM as a SCSI disk. Without --persist only
 * the running instance gets it (the VMI subresource; it is gone after a restart); with
 * --persist the VM's template gets it too (the VM subresource), with no restart needed. The
 * volume is a DataVolume when one of that name exists, else a PersistentVolumeClaim.
 */
import type { Command } from 'commander';
import { isNotFound, type ResourceRef } from '@vessel/client';
import { contextOf, out } from '../context.ts';
import { UsageError } from '../errors.ts';

const DATAVOLUMES: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };

interface Flags {
  volumeName?: string;
  persist?: boolean;
  serial?: string;
  bus: string;
  cache?: string;
  dryRun?: boolean;
}

/** PUT of one of KubeVirt's volume subresources (also used by removevolume). */
export function volumeSubresourcePath(ns: string, persist: boolean | undefined, name: string, action: 'addvolume' | 'removevolume'): string {
  const resource = persist ? 'virtualmachines' : 'virtualmachineinstances';
  return `/apis/subresources.kubevirt.io/v1/namespaces/${encodeURIComponent(ns)}/${resource}/${encodeURIComponent(name)}/${action}`;
}

export function registerAddVolume(program: Command): void {
  program
    .command('addvolume')
    .description('hotplug a DataVolume or PersistentVolumeClaim into a running VM as a disk')
    .argument('<name>', 'VM name')
    .requiredOption('--volume-name <name>', 'the DataVolume or PersistentVolumeClaim to add (also the disk name)')
    .option('--persist', "also add it to the VM's template, so it stays after a restart")
    .option('--serial <serial>', 'serial number the guest sees on the disk')
    .option('--bus <bus>', 'disk bus (only scsi can be hotplugged)', 'scsi')
    .option('--cache <mode>', 'cache mode: none, writethrough or writeback')
    .option('--dry-run', 'check the request without changing anything')
    .action(async (name: string, flags: Flags, cmd: Command) => {
      const volume = flags.volumeName ?? '';
      if (!volume) throw new UsageError('--volume-name must name a DataVolume or PersistentVolumeClaim');
      const ctx = contextOf(cmd);
      const client = ctx.client();
      const ns = ctx.namespace();
      const isDataVolume = await client.get(DATAVOLUMES, volume, { namespace: ns }).then(
        () => true,
        (e: unknown) => {
          if (isNotFound(e)) return false;
          throw e;
        },
      );
      const body = {
        name: volume,
        disk: {
          name: volume,
          disk: { bus: flags.bus },
          ...(flags.serial !== undefined ? { serial: flags.serial } : {}),
          ...(flags.cache !== undefined ? { cache: flags.cache } : {}),
        },
        volumeSource: isDataVolume
          ? { dataVolume: { name: volume, hotpluggable: true } }
          : { persistentVolumeClaim: { claimName: volume, hotpluggable: true } },
        ...(flags.dryRun ? { dryRun: ['All'] } : {}),
      };
      await client.request('PUT', volumeSubresourcePath(ns, flags.persist, name, 'addvolume'), { body });
      out(`Successfully submitted add volume request to VM ${name} for volume ${volume}${flags.dryRun ? ' (dry run)' : ''}\n`);
    });
}
