/**
 * `vessel clone SRC --name NEW` makes a VirtualMachineClone of a VM (or, with
 * --from-snapshot, of a VirtualMachineSnapshot) and waits for the new VM; `--count N
 * --name-prefix P` makes N clones named P1..PN from one snapshot of the source, taken once,
 * so each clone costs a linked disk and nothing more. --full copies the disks instead.
 */
import type { Command } from 'commander';
import { isNotFound, type Client } from '@vessel/client';
import { findByResource } from '@vessel/api';
import { contextOf, note, out } from '../context.ts';
import { UsageError } from '../errors.ts';
import { createSnapshot, waitFor, waitForSnapshot } from './snapshot.ts';

const CLONES = findByResource('clone.kubevirt.io', 'v1beta1', 'virtualmachineclones')!;
const SNAPSHOTS = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshots')!;
type Obj = Record<string, unknown>;

interface Flags {
  name?: string;
  count?: string;
  namePrefix?: string;
  fromSnapshot?: boolean;
  full?: boolean;
  wait: boolean;
  timeout: string;
}

export function registerClone(program: Command): void {
  program
    .command('clone')
    .description('clone a VM (new MAC addresses, firmware UUID and cloud-init instance id) into one or more new VMs')
    .argument('<source>', 'VirtualMachine to clone (or a VirtualMachineSnapshot with --from-snapshot)')
    .option('--name <vm>', 'name of the new VM')
    .option('--count <n>', 'make this many clones')
    .option('--name-prefix <prefix>', 'with --count: the new VMs are <prefix>1 ... <prefix>N')
    .option('--from-snapshot', 'the source is a VirtualMachineSnapshot')
    .option('--full', 'copy the disks instead of linking them to the snapshot')
    .option('--no-wait', 'return once the clones are created')
    .option('--timeout <seconds>', 'how long to wait', '600')
    .action(async (source: string, flags: Flags, cmd: Command) => {
      const count = flags.count === undefined ? 1 : Number(flags.count);
      if (!Number.isInteger(count) || count < 1) throw new UsageError(`--count must be a positive whole number, not ${flags.count}`);
      if (count > 1 && !flags.namePrefix) throw new UsageError('--count needs --name-prefix: the new VMs are named <prefix>1 ... <prefix>N');
      if (count === 1 && flags.namePrefix && flags.name) throw new UsageError('use either --name or --name-prefix');
      const targets =
        count === 1 && !flags.namePrefix ? [flags.name ?? `${source}-clone`] : Array.from({ length: count }, (_, i) => `${flags.namePrefix}${i + 1}`);
      const ctx = contextOf(cmd);
      const ns = ctx.namespace();
      const client = ctx.client();
      const timeoutMs = Number(flags.timeout) * 1000;

      // Several clones of a VM share one snapshot, taken here and removed at the end.
      let snapshot = flags.fromSnapshot ? source : undefined;
      const shared = !snapshot && targets.length > 1 ? `clone-${source}-${Date.now().toString(36)}` : undefined;
      if (shared) {
        await createSnapshot(client, ns, shared, source);
        await waitForSnapshot(client, ns, shared, timeoutMs);
        snapshot = shared;
      }
      try {
        for (const target of targets) await createClone(client, ns, target, snapshot, source, flags.full === true);
        out(`${targets.length} VirtualMachineClone${targets.length === 1 ? '' : 's'} created: ${targets.join(', ')}\n`);
        if (!flags.wait) return;
        for (const target of targets) {
          await waitFor(client, CLONES, ns, `clone-${target}`, timeoutMs, (s) => {
            if (s.phase === 'Failed')
              throw new Error(`clone ${target} failed: ${String(((s.conditions as Obj[] | undefined) ?? []).find((c) => c.type === 'Ready')?.message ?? '')}`);
            return s.phase === 'Succeeded';
          });
        }
        out(`cloned ${source} into ${targets.join(', ')}\n`);
      } finally {
        // The clones' disks keep reading the snapshot's files; only the object goes.
        if (shared && flags.wait) {
          await client.delete(SNAPSHOTS, shared, { namespace: ns }).catch((e: unknown) => {
            // Must not hide the clone's own outcome, but a snapshot left behind is worth a line.
            if (!isNotFound(e)) note(`could not delete the temporary snapshot ${ns}/${shared} (delete it by hand): ${e instanceof Error ? e.message : e}\n`);
          });
        }
      }
    });
}

async function createClone(client: Client, ns: string, target: string, snapshot: string | undefined, vm: string, full: boolean): Promise<void> {
  await client.create(
    CLONES,
    {
      apiVersion: 'clone.kubevirt.io/v1beta1',
      kind: 'VirtualMachineClone',
      metadata: { name: `clone-${target}`, namespace: ns, ...(full ? { annotations: { 'clone.vessel.io/type': 'full' } } : {}) },
      spec: {
        source: snapshot
          ? { apiGroup: 'snapshot.kubevirt.io', kind: 'VirtualMachineSnapshot', name: snapshot }
          : { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: vm },
        target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: target },
      },
    },
    { namespace: ns },
  );
}
