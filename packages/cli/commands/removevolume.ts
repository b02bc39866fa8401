/**
 * `vessel removevolume VM --volume-name=NAME [--persist]`, virtctl's removevolume: unplugs a
 * hotplugged volume from the running VM (the VMI subresource); with --persist it is removed
 * from the VM's template as well (the VM subresource). Volumes that were not hotplugged are
 * refused by the server.
 */
import type { Command } from 'commander';
import { contextOf, out } from '../context.ts';
import { UsageError } from '../errors.ts';
import { volumeSubresourcePath } from './addvolume.ts';

interface Flags {
  volumeName?: string;
  persist?: boolean;
  dryRun?: boolean;
}

export function registerRemoveVolume(program: Command): void {
  program
    .command('removevolume')
    .description('unplug a hotplugged volume from a running VM')
    .argument('<name>', 'VM name')
    .requiredOption('--volume-name <name>', 'the volume to remove')
    .option('--persist', "also remove it from the VM's template")
    .option('--dry-run', 'check the request without changing anything')
    .action(async (name: string, flags: Flags, cmd: Command) => {
      const volume = flags.volumeName ?? '';
      if (!volume) throw new UsageError('--volume-name must name the volume to remove');
      const ctx = contextOf(cmd);
      const body = { name: volume, ...(flags.dryRun ? { dryRun: ['All'] } : {}) };
      await ctx.client().request('PUT', volumeSubresourcePath(ctx.namespace(), flags.persist, name, 'removevolume'), { body });
      out(`Successfully submitted remove volume request to VM ${name} for volume ${volume}${flags.dryRun ? ' (dry run)' : ''}\n`);
    });
}
