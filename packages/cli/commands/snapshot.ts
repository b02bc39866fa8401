/**
 * `vessel snapshot VM NAME` takes a VirtualMachineSnapshot of a VM (online if it runs) and
 * `vessel restore VM SNAPSHOT [--to NEWVM]` restores it, into the VM itself (which must be
 * stopped) or into a new VM. Both create KubeVirt's objects, then wait for them to finish
 * unless --no-wait, printing each change of phase.
 */
import type { Command } from 'commander';
import type { Client, KubeObject } from '@vessel/client';
import { findByResource, snapshots } from '@vessel/api';
import { contextOf, note, out } from '../context.ts';

const SNAPSHOTS = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshots')!;
const CONTENTS = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshotcontents')!;
const RESTORES = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinerestores')!;
type Obj = Record<string, unknown>;
type Condition = { type: string; status: string; reason?: string; message?: string };

export function registerSnapshot(program: Command): void {
  program
    .command('snapshot')
    .description('take a VirtualMachineSnapshot of a VM (online while it runs)')
    .argument('<vm>', 'VirtualMachine name')
    .argument('<name>', 'name of the new VirtualMachineSnapshot')
    .option('--with-memory', 'also save the guest memory (the VM must run), so a restore resumes the guest instead of booting it')
    .option('--sparsify', "have the guest agent trim the guest's free space first, so the snapshot and copies of it leave it out")
    .option('--no-wait', 'return once the snapshot is created')
    .option('--timeout <seconds>', 'how long to wait', '300')
    .action(async (vm: string, name: string, flags: { withMemory?: boolean; sparsify?: boolean; wait: boolean; timeout: string }, cmd: Command) => {
      const ctx = contextOf(cmd);
      const ns = ctx.namespace();
      const client = ctx.client();
      await createSnapshot(client, ns, name, vm, { withMemory: flags.withMemory, sparsify: flags.sparsify });
      out(`virtualmachinesnapshot.snapshot.kubevirt.io/${name} created\n`);
      if (!flags.wait) return;
      const snap = await waitForSnapshot(client, ns, name, Number(flags.timeout) * 1000);
      if (flags.sparsify) note(await sparsified(client, snap));
      out(`snapshot ${name} of ${vm} is ready to use\n`);
    });

  program
    .command('restore')
    .description('restore a VM from a VirtualMachineSnapshot (the VM must be stopped), or make a new VM from it with --to')
    .argument('<vm>', 'VirtualMachine the snapshot was taken of')
    .argument('<snapshot>', 'VirtualMachineSnapshot name')
    .option('--to <newvm>', 'restore into a new VM of this name instead')
    .option('--name <restore>', 'name of the VirtualMachineRestore (default restore-<vm>-<time>)')
    .option('--stop', 'stop the VM first if it runs (targetReadinessPolicy StopTarget)')
    .option('--no-wait', 'return once the restore is created')
    .option('--timeout <seconds>', 'how long to wait', '300')
    .action(async (vm: string, snapshot: string, flags: { to?: string; name?: string; stop?: boolean; wait: boolean; timeout: string }, cmd: Command) => {
      const ctx = contextOf(cmd);
      const ns = ctx.namespace();
      const client = ctx.client();
      const name = flags.name ?? `restore-${flags.to ?? vm}-${Date.now().toString(36)}`;
      const target = flags.to ?? vm;
      await client.create(
        RESTORES,
        {
          apiVersion: 'snapshot.kubevirt.io/v1beta1',
          kind: 'VirtualMachineRestore',
          metadata: { name, namespace: ns },
          spec: {
            target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: target },
            virtualMachineSnapshotName: snapshot,
            ...(flags.stop ? { targetReadinessPolicy: 'StopTarget' } : {}),
          },
        },
        { namespace: ns },
      );
      out(`virtualmachinerestore.snapshot.kubevirt.io/${name} created\n`);
      if (!flags.wait) return;
      await waitFor(client, RESTORES, ns, name, Number(flags.timeout) * 1000, (s) => s.complete === true);
      out(`${target} restored from ${snapshot}\n`);
    });
}

export interface SnapshotFlags {
  /** Save the guest memory too (snapshot.vessel.io/with-memory). */
  withMemory?: boolean;
  /** Trim the guest's free space first (snapshot.vessel.io/sparsify). */
  sparsify?: boolean;
}

/** Creates a VirtualMachineSnapshot `name` of VM `vm`. */
export async function createSnapshot(client: Client, ns: string, name: string, vm: string, flags: SnapshotFlags = {}): Promise<void> {
  const annotations: Record<string, string> = {};
  if (flags.withMemory) annotations[snapshots.WITH_MEMORY] = 'true';
  if (flags.sparsify) annotations[snapshots.SPARSIFY] = 'true';
  await client.create(
    SNAPSHOTS,
    {
      apiVersion: 'snapshot.kubevirt.io/v1beta1',
      kind: 'VirtualMachineSnapshot',
      metadata: { name, namespace: ns, annotations },
      spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: vm } },
    },
    { namespace: ns },
  );
}

/** What trimming did for a snapshot taken with sparsify, as a line for the user. */
export async function sparsified(client: Client, snap: KubeObject): Promise<string> {
  const ns = snap.metadata?.namespace;
  const content = await client.get(CONTENTS, String((snap.status as Obj).virtualMachineSnapshotContentName), { namespace: ns });
  const bytes = content.metadata?.annotations?.[snapshots.TRIMMED_BYTES];
  return bytes === undefined
    ? `warning: the guest's free space was not trimmed (the VM is stopped or no guest agent answers): only blocks that were never written or are zero are left out\n`
    : `the guest trimmed ${Math.round(Number(bytes) / 1048576)} MiB of free space before the snapshot\n`;
}

/** Waits until the snapshot is ready to use; throws with its error when it failed. */
export function waitForSnapshot(client: Client, ns: string, name: string, timeoutMs: number): Promise<KubeObject> {
  return waitFor(client, SNAPSHOTS, ns, name, timeoutMs, (s) => {
    if (s.phase === 'Failed')
      throw new Error(`snapshot ${name} failed: ${String((s.error as Obj | undefined)?.message ?? `see vessel describe vmsnapshot ${name}`)}`);
    return s.readyToUse === true;
  });
}

/** Polls until `done(status)`, printing each new Progressing message. */
export async function waitFor(
  client: Client,
  res: typeof SNAPSHOTS,
  ns: string,
  name: string,
  timeoutMs: number,
  done: (status: Obj) => boolean,
): Promise<KubeObject> {
  const deadline = Date.now() + timeoutMs;
  let said = '';
  for (;;) {
    const obj = await client.get(res, name, { namespace: ns });
    const status = (obj.status ?? {}) as Obj;
    if (done(status)) return obj;
    const progressing = ((status.conditions as Condition[] | undefined) ?? []).find((c) => c.type === 'Progressing');
    const line = progressing?.message ? `${status.phase ?? 'Pending'}: ${progressing.message}` : '';
    if (line && line !== said) {
      out(`${line}\n`);
      said = line;
    }
    if (Date.now() > deadline)
      throw new Error(
        `${res.kind} ${ns}/${name} did not finish within ${timeoutMs / 1000}s${said ? ` (${said})` : ''}: see vessel describe ${res.plural} ${name}`,
      );
    await new Promise((r) => setTimeout(r, 500));
  }
}
