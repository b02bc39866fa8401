/**
 * virtctl's `migrate` and `migrate-cancel`: `vessel migrate VM [--node N]` creates a
 * VirtualMachineInstanceMigration of the VM's running instance (the node, when named, goes in
 * the vessel.io/migration-target-node annotation) and waits for it, printing each phase;
 * `vessel migrate-cancel VM` deletes the migration that runs, which aborts it (docs/migration.md).
 */
import type { Command } from 'commander';
import type { Client, KubeObject } from '@vessel/client';
import { findByResource, migration } from '@vessel/api';
import { contextOf, note, out } from '../context.ts';
import { MigrationProgressLine } from '../printers/migration-progress.ts';

const VMIMS = findByResource('kubevirt.io', 'v1', 'virtualmachineinstancemigrations')!;
/** The controller's annotation for a named target node (packages/controllers/migration.ts). */
const TARGET_NODE = 'vessel.io/migration-target-node';
const FINAL = new Set(['Succeeded', 'Failed']);
type Status = {
  phase?: string;
  phaseTransitionTimestamps?: { phase: string }[];
  migrationState?: { sourceNode?: string; targetNode?: string; failureReason?: string; startTimestamp?: string; endTimestamp?: string };
};

export function registerMigrate(program: Command): void {
  program
    .command('migrate')
    .description('live-migrate a running VM to another node (disks on the shared pool)')
    .argument('<vm>', 'VirtualMachine (or VirtualMachineInstance) name')
    .option('--node <node>', 'the node to move to (default: the scheduler chooses)')
    .option('--no-wait', 'return once the migration is created')
    .option('--timeout <seconds>', 'how long to wait', '900')
    .action(async (vm: string, flags: { node?: string; wait: boolean; timeout: string }, cmd: Command) => {
      const ctx = contextOf(cmd);
      const ns = ctx.namespace();
      const client = ctx.client();
      const name = `${vm.slice(0, 40)}-migration-${Date.now().toString(36)}`;
      await client.create(
        VMIMS,
        {
          apiVersion: 'kubevirt.io/v1',
          kind: 'VirtualMachineInstanceMigration',
          metadata: { name, namespace: ns, ...(flags.node ? { annotations: { [TARGET_NODE]: flags.node } } : {}) },
          spec: { vmiName: vm },
        },
        { namespace: ns },
      );
      out(`virtualmachineinstancemigration.kubevirt.io/${name} created\n`);
      if (!flags.wait) return;
      const st = await waitForMigration(client, ns, name, Number(flags.timeout) * 1000);
      const ms = st.migrationState ?? {};
      if (st.phase === 'Failed') throw new Error(`migration of ${vm} failed: ${ms.failureReason ?? 'no reason given'}`);
      const secs =
        ms.startTimestamp && ms.endTimestamp ? ` (transfer ${((Date.parse(ms.endTimestamp) - Date.parse(ms.startTimestamp)) / 1000).toFixed(1)} s)` : '';
      out(`VM ${vm} migrated from ${ms.sourceNode} to ${ms.targetNode}${secs}\n`);
    });

  program
    .command('migrate-cancel')
    .description("cancel a VM's running live migration (it keeps running where it was)")
    .argument('<vm>', 'VirtualMachine (or VirtualMachineInstance) name')
    .action(async (vm: string, _flags: unknown, cmd: Command) => {
      const ctx = contextOf(cmd);
      const ns = ctx.namespace();
      const client = ctx.client();
      const running = (await client.list(VMIMS, { namespace: ns })).items.filter(
        (m) => (m.spec as { vmiName?: string } | undefined)?.vmiName === vm && !FINAL.has(String((m.status as Status | undefined)?.phase ?? '')),
      );
      if (running.length === 0) throw new Error(`VM ${vm} has no migration in progress`);
      for (const m of running) await client.delete(VMIMS, m.metadata!.name!, { namespace: ns });
      out(`VM ${vm}: migration ${running.map((m) => m.metadata!.name).join(', ')} cancelled\n`);
    });
}

/** Polls the migration until Succeeded or Failed, printing each phase it passes and, while it runs, its progress. */
async function waitForMigration(client: Client, ns: string, name: string, timeoutMs: number): Promise<Status> {
  const deadline = Date.now() + timeoutMs;
  let printed = 0;
  const progress = new MigrationProgressLine();
  for (;;) {
    const m = (await client.get(VMIMS, name, { namespace: ns })) as KubeObject;
    const st = (m.status ?? {}) as Status;
    const phase = st.phase ?? '';
    // Every phase passed since the last poll, from the transition timestamps (a fast migration passes several).
    const passed = (st.phaseTransitionTimestamps ?? []).map((p) => p.phase);
    const where = st.migrationState?.targetNode ? ` (${st.migrationState.sourceNode} → ${st.migrationState.targetNode})` : '';
    if (printed < passed.length) progress.clear();
    for (; printed < passed.length; printed++) note(`${name}: ${passed[printed]}${printed === passed.length - 1 ? where : ''}\n`);
    if (FINAL.has(phase)) {
      progress.clear();
      return st;
    }
    if (phase === 'Running') progress.update(migration.progressOf(m));
    if (Date.now() > deadline) throw new Error(`migration ${name} did not finish within ${timeoutMs / 1000} s (phase ${phase || 'none'}); it goes on`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
