/**
 * virtctl's `memory-dump`: `vessel memory-dump get VM --claim-name C [--create-claim]
 * [--storage-class SC]` asks for a dump of the running guest's memory into claim C (PUT the
 * VM's memorydump subresource; --create-claim first makes a claim of the size the dump needs:
 * the guest's memory + 100Mi), `vessel memory-dump remove VM` drops the association
 * (removememorydump). The dump's progress is the VM's status.memoryDumpRequest.
 */
import type { Command } from 'commander';
import { isStatusError } from '@vessel/client';
import { contextOf, out } from '../context.ts';
import { UsageError } from '../errors.ts';

const OVERHEAD_MI = 100;
const base = (ns: string, vm: string) => `/apis/subresources.kubevirt.io/v1/namespaces/${encodeURIComponent(ns)}/virtualmachines/${encodeURIComponent(vm)}`;

/** MiB of a memory quantity (Ki/Mi/Gi/Ti or bytes), rounded up. */
function mebibytes(q: string): number {
  const m = /^(\d+)(Ki|Mi|Gi|Ti|)$/.exec(q);
  if (!m) throw new UsageError(`cannot read the VM's memory ${JSON.stringify(q)}: create the claim yourself`);
  const factor = { Ki: 1 / 1024, Mi: 1, Gi: 1024, Ti: 1024 * 1024, '': 1 / 2 ** 20 }[m[2] as 'Ki' | 'Mi' | 'Gi' | 'Ti' | ''];
  return Math.ceil(Number(m[1]) * factor);
}

export function registerMemoryDump(program: Command): void {
  const cmd = program.command('memory-dump').description("dump a running VM's memory into a claim (virtctl memory-dump)");
  cmd
    .command('get')
    .description('dump the memory of the running VM into the claim --claim-name')
    .argument('<vm>', 'VirtualMachine name')
    .requiredOption('--claim-name <name>', 'the PersistentVolumeClaim to write the dump into')
    .option('--create-claim', "create the claim first, sized for the dump (the guest's memory + 100Mi)")
    .option('--storage-class <name>', 'the storage class of the claim --create-claim makes')
    .action(async (vm: string, opts: { claimName: string; createClaim?: boolean; storageClass?: string }, sub: Command) => {
      const ctx = contextOf(sub);
      const ns = ctx.namespace();
      const client = ctx.client();
      if (opts.createClaim) {
        const vmi = (await client.request(
          'GET',
          `/apis/kubevirt.io/v1/namespaces/${encodeURIComponent(ns)}/virtualmachineinstances/${encodeURIComponent(vm)}`,
        )) as {
          spec?: { domain?: { memory?: { guest?: string }; resources?: { requests?: { memory?: string } } } };
        };
        const memory = vmi.spec?.domain?.memory?.guest ?? vmi.spec?.domain?.resources?.requests?.memory ?? '0';
        const size = `${mebibytes(memory) + OVERHEAD_MI}Mi`;
        await client.request('POST', `/api/v1/namespaces/${encodeURIComponent(ns)}/persistentvolumeclaims`, {
          body: {
            apiVersion: 'v1',
            kind: 'PersistentVolumeClaim',
            metadata: { name: opts.claimName, annotations: { 'cdi.kubevirt.io/storage.bind.immediate.requested': 'true' } },
            spec: {
              accessModes: ['ReadWriteOnce'],
              resources: { requests: { storage: size } },
              ...(opts.storageClass ? { storageClassName: opts.storageClass } : {}),
            },
          },
        });
        out(`PersistentVolumeClaim ${opts.claimName} created (${size})\n`);
      }
      // A claim just made is not Bound at once: the server answers 409 until it is.
      const deadline = Date.now() + (opts.createClaim ? 120_000 : 0);
      for (;;) {
        try {
          await client.request('PUT', `${base(ns, vm)}/memorydump`, { body: { claimName: opts.claimName } });
          break;
        } catch (e) {
          if (!(isStatusError(e, 'Conflict') && /not Bound/.test((e as Error).message) && Date.now() < deadline)) throw e;
          await new Promise((resolve) => setTimeout(resolve, 1000));
        }
      }
      out(`Successfully submitted memory dump request of VM ${vm}\n`);
    });
  cmd
    .command('remove')
    .description("remove the VM's association with its memory dump claim")
    .argument('<vm>', 'VirtualMachine name')
    .action(async (vm: string, _opts: unknown, sub: Command) => {
      const ctx = contextOf(sub);
      await ctx.client().request('PUT', `${base(ctx.namespace(), vm)}/removememorydump`, { body: {} });
      out(`Successfully submitted remove memory dump request of VM ${vm}\n`);
    });
}
