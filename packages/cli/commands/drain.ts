/**
 * `vessel cordon|uncordon|drain NODE`, as kubectl's for pods (docs/migration.md "Drain"):
 * cordon sets the node's spec.unschedulable; drain cordons, then live-migrates every VMI Running
 * there whose spec.evictionStrategy is LiveMigrate (or LiveMigrateIfPossible while its
 * LiveMigratable condition is True) with one VirtualMachineInstanceMigration each, and waits
 * until none runs there. Other VMIs (no strategy counts as None, KubeVirt's default) make it
 * refuse with their list, the node left cordoned, as kubectl drain does; with --force their
 * VMs are stopped instead (kubectl drain --force deletes the pods).
 */
import type { Command } from 'commander';
import type { Client, KubeObject } from '@vessel/client';
import { findByResource, migrationConfig } from '@vessel/api';
import { contextOf, note, out } from '../context.ts';

const NODES = findByResource('', 'v1', 'nodes')!;
const VMIS = findByResource('kubevirt.io', 'v1', 'virtualmachineinstances')!;
const VMIMS = findByResource('kubevirt.io', 'v1', 'virtualmachineinstancemigrations')!;
const KUBEVIRTS = findByResource('kubevirt.io', 'v1', 'kubevirts')!;
const FINAL = new Set(['Succeeded', 'Failed']);
/** Migrations drain creates carry the node they evacuate (as the evacuation controller's). */
const EVACUATION_LABEL = 'kubevirt.io/evacuation-node';

type VmiLike = {
  metadata?: { name?: string; namespace?: string; ownerReferences?: { kind?: string; name?: string }[] };
  spec?: { evictionStrategy?: string };
  status?: { phase?: string; nodeName?: string; conditions?: { type: string; status: string; message?: string }[] };
};

export interface DrainPlan {
  /** "namespace/name" of the VMIs to live-migrate. */
  migrate: string[];
  /** The others, with why they cannot move. */
  stop: { key: string; why: string }[];
}

const keyOf = (v: VmiLike) => `${v.metadata?.namespace}/${v.metadata?.name}`;
const runsOn = (v: VmiLike, node: string) => v.status?.nodeName === node && v.status?.phase === 'Running';

/** Which of the VMIs running on `node` move and which must stop (pure: unit-tested); `clusterDefault`: the KubeVirt object's evictionStrategy. */
export function planDrain(vmis: VmiLike[], node: string, clusterDefault?: string): DrainPlan {
  const plan: DrainPlan = { migrate: [], stop: [] };
  for (const v of vmis.filter((x) => runsOn(x, node))) {
    const strategy = v.spec?.evictionStrategy ?? clusterDefault ?? 'None';
    const migratable = v.status?.conditions?.find((c) => c.type === 'LiveMigratable');
    if (strategy === 'LiveMigrate' || (strategy === 'LiveMigrateIfPossible' && migratable?.status === 'True')) plan.migrate.push(keyOf(v));
    else if (strategy === 'LiveMigrateIfPossible')
      plan.stop.push({ key: keyOf(v), why: `not live-migratable: ${migratable?.message || 'no LiveMigratable condition'}` });
    else plan.stop.push({ key: keyOf(v), why: `evictionStrategy ${strategy}` });
  }
  return plan;
}

/** After a drain's migration of a VMI failed, the next try waits this long (kubectl drain retries evictions every 5 s). */
export const RETRY_AFTER_MS = 5000;

/**
 * The VMIs a drain migrates again now (pure: unit-tested): each of `keys` ("namespace/name")
 * still on the node whose migrations are all finished and whose newest one Failed at least
 * RETRY_AFTER_MS ago (`failedSeen`: when this drain first saw that failure, by migration uid;
 * filled in here). A VMI with a migration under way, or none yet, waits. As KubeVirt's evacuation
 * controller, which creates a new migration for a VMI still on a draining node, until the
 * drain's timeout.
 */
export function retryDue(
  keys: readonly string[],
  migrations: readonly KubeObject[],
  failedSeen: Map<string, number>,
  now: number,
): { key: string; failed: string; reason: string }[] {
  const due: { key: string; failed: string; reason: string }[] = [];
  for (const key of keys) {
    const [ns, name] = key.split('/');
    const mine = migrations
      .filter((m) => m.metadata?.namespace === ns && (m.spec as { vmiName?: string } | undefined)?.vmiName === name)
      .sort((a, b) => String(a.metadata?.creationTimestamp ?? '').localeCompare(String(b.metadata?.creationTimestamp ?? '')));
    if (mine.length === 0 || mine.some((m) => !FINAL.has(phaseOf(m)))) continue;
    const last = mine.at(-1)!;
    if (phaseOf(last) !== 'Failed') continue;
    const uid = String(last.metadata?.uid ?? last.metadata?.name);
    const seen = failedSeen.get(uid) ?? now;
    failedSeen.set(uid, seen);
    if (now - seen < RETRY_AFTER_MS) continue;
    failedSeen.set(uid, Number.POSITIVE_INFINITY); // one retry per failed migration
    const reason = (last.status as { migrationState?: { failureReason?: string } } | undefined)?.migrationState?.failureReason ?? 'no reason given';
    due.push({ key, failed: String(last.metadata?.name), reason });
  }
  return due;
}

async function setUnschedulable(client: Client, node: string, on: boolean): Promise<void> {
  await client.patch(NODES, node, { spec: { unschedulable: on ? true : null } });
  out(`node/${node} ${on ? 'cordoned' : 'uncordoned'}\n`);
}

export function registerDrain(program: Command): void {
  program
    .command('cordon')
    .description('mark a node unschedulable')
    .argument('<node>')
    .action(async (node: string, _flags: unknown, cmd: Command) => setUnschedulable(contextOf(cmd).client(), node, true));
  program
    .command('uncordon')
    .description('mark a node schedulable again')
    .argument('<node>')
    .action(async (node: string, _flags: unknown, cmd: Command) => setUnschedulable(contextOf(cmd).client(), node, false));
  program
    .command('drain')
    .description('cordon a node and live-migrate its VMs away (evictionStrategy LiveMigrate); --force stops the others')
    .argument('<node>')
    .option('--force', 'stop the VMs that cannot be live-migrated')
    .option('--timeout <seconds>', 'how long to wait for the node to be empty', '900')
    .action(async (node: string, flags: { force?: boolean; timeout: string }, cmd: Command) => {
      const client = contextOf(cmd).client();
      await client.get(NODES, node);
      await setUnschedulable(client, node, true);
      const vmis = (await client.list(VMIS)).items as VmiLike[];
      // The cluster default for VMIs without their own strategy (none readable: KubeVirt's None).
      const kv = await client.get(KUBEVIRTS, migrationConfig.KUBEVIRT_NAME, { namespace: migrationConfig.KUBEVIRT_NAMESPACE }).catch(() => undefined);
      const plan = planDrain(vmis, node, migrationConfig.clusterEvictionStrategy(kv));
      if (plan.stop.length > 0 && !flags.force)
        throw new Error(
          `cannot drain node ${node}: these VMs cannot be live-migrated (use --force to stop them):\n${plan.stop.map((s) => `  ${s.key}: ${s.why}`).join('\n')}`,
        );
      for (const s of plan.stop)
        await stopVm(
          client,
          vmis.find((v) => keyOf(v) === s.key)!,
        );
      const migrations = (await client.list(VMIMS)).items;
      for (const key of plan.migrate) {
        const [ns, name] = key.split('/') as [string, string];
        const running = migrations.some(
          (m) => m.metadata?.namespace === ns && (m.spec as { vmiName?: string } | undefined)?.vmiName === name && !FINAL.has(phaseOf(m)),
        );
        if (running) {
          note(`${key}: a migration is already under way\n`);
          continue;
        }
        await evict(client, key, node);
      }
      await waitEmpty(client, node, Number(flags.timeout) * 1000, plan.migrate);
      out(`node/${node} drained\n`);
    });
}

/** One live migration of VMI `key` off `node`, labelled as the drain's. */
async function evict(client: Client, key: string, node: string): Promise<void> {
  const [ns, name] = key.split('/') as [string, string];
  const created = await client.create(
    VMIMS,
    {
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachineInstanceMigration',
      metadata: { generateName: `${name.slice(0, 40)}-drain-`, namespace: ns, labels: { [EVACUATION_LABEL]: node } },
      spec: { vmiName: name },
    },
    { namespace: ns },
  );
  out(`evicting ${key} (live migration ${created.metadata?.name})\n`);
}

const phaseOf = (m: KubeObject): string => String((m.status as { phase?: string } | undefined)?.phase ?? '');

/** Stops a VMI's VirtualMachine (the VMI is deleted when it has none). */
async function stopVm(client: Client, v: VmiLike): Promise<void> {
  const ns = v.metadata!.namespace!;
  const name = v.metadata!.name!;
  const vm = v.metadata?.ownerReferences?.find((o) => o.kind === 'VirtualMachine')?.name;
  if (vm)
    await client.request('PUT', `/apis/subresources.kubevirt.io/v1/namespaces/${encodeURIComponent(ns)}/virtualmachines/${encodeURIComponent(vm)}/stop`, {
      body: {},
    });
  else await client.delete(VMIS, name, { namespace: ns });
  out(`stopping ${ns}/${name}\n`);
}

/** Polls until no VMI runs on the node, printing each change of what is left; a failed migration of one of `migrate` is tried again (retryDue). */
async function waitEmpty(client: Client, node: string, timeoutMs: number, migrate: readonly string[]): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const failedSeen = new Map<string, number>();
  let last = '';
  for (;;) {
    const left = ((await client.list(VMIS)).items as VmiLike[]).filter((v) => runsOn(v, node)).map(keyOf);
    if (left.length === 0) return;
    const again = retryDue(
      migrate.filter((k) => left.includes(k)),
      (await client.list(VMIMS)).items,
      failedSeen,
      Date.now(),
    );
    for (const r of again) {
      note(`${r.key}: migration ${r.failed} failed (${r.reason}); trying again\n`);
      await evict(client, r.key, node);
    }
    const line = `waiting for ${left.length} VM(s) on ${node}: ${left.join(', ')}`;
    if (line !== last) note(`${line}\n`);
    last = line;
    if (Date.now() > deadline) throw new Error(`node ${node} still runs ${left.join(', ')} after ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 500));
  }
}
