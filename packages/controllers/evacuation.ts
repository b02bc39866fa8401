/**
 * Evacuation (KubeVirt's evacuation controller, the drain half; see docs/migration.md "Drain"):
 * a node tainted `kubevirt.io/drain` (KubeVirt's nodeDrainTaintKey: the KubeVirt object's
 * spec.configuration.migrations.nodeDrainTaintKey, else that default; effect NoSchedule) has
 * each of its Running VMIs that asks for it (spec.evictionStrategy LiveMigrate, or
 * LiveMigrateIfPossible while its LiveMigratable condition is True) live-migrated away: one
 * VirtualMachineInstanceMigration per VMI, created only when none of its migrations is
 * unfinished, with an `EvictionTriggered` event on the VMI. VMIs without such a strategy stay
 * (KubeVirt's default strategy is None); the migration controller picks the target, and the
 * taint keeps it off this node. Work is keyed by node.
 */
import { migration, migrationConfig, refs } from '@vessel/api';
import type { Client } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import { BY_NODE, byNode, cacheKey, Controller, EventRecorder, getCondition, type Informer, type KubeObject, type Log } from '@vessel/runtime';

const { NODES, VMIS, VMIMS, KUBEVIRTS } = refs;
type Obj = Record<string, unknown>;

/** KubeVirt's default nodeDrainTaintKey. */
export const DRAIN_TAINT = migrationConfig.DEFAULT_DRAIN_TAINT;
/** On migrations this controller creates: the node being evacuated (KubeVirt labels them the same way). */
export const EVACUATION_LABEL = 'kubevirt.io/evacuation-node';
/** After a failed evacuation migration, the wait before the next try (the migration's reason is in its status). */
const RETRY_MS = 30_000;

const FINAL = new Set(['Succeeded', 'Failed']);
const phaseOf = (m: KubeObject): string => String((m.status as Obj | undefined)?.phase ?? '');
const vmiKeyOf = (m: KubeObject): string => `${m.metadata.namespace}/${String((m.spec as Obj | undefined)?.vmiName ?? '')}`;
const VMI_INDEX = 'vmi';

/** Whether a node carries the drain taint with effect NoSchedule. */
export function hasDrainTaint(node: KubeObject | undefined, key = DRAIN_TAINT): boolean {
  const taints = ((node?.spec as { taints?: { key?: string; effect?: string }[] } | undefined)?.taints ?? []) as { key?: string; effect?: string }[];
  return taints.some((t) => t.key === key && t.effect === 'NoSchedule');
}

/**
 * Whether a VMI is to be live-migrated off a draining node: its own spec.evictionStrategy, else
 * the KubeVirt object's `kv` (spec.configuration.evictionStrategy), else None (KubeVirt's default).
 */
export function wantsLiveMigration(vmi: KubeObject, kv?: KubeObject): boolean {
  const strategy = migrationConfig.evictionStrategyOf(vmi, kv);
  if (strategy === 'LiveMigrate') return true;
  return strategy === 'LiveMigrateIfPossible' && getCondition(vmi, 'LiveMigratable')?.status === 'True';
}

export class EvacuationController extends Controller {
  private readonly nodes: Informer;
  private readonly vmis: Informer;
  private readonly vmims: Informer;
  private readonly events: EventRecorder;
  private readonly kubevirts: Informer;

  constructor(client: Client, log?: Log) {
    super('evacuation', client, log);
    this.events = new EventRecorder(client, 'virt-controller');
    this.nodes = this.inform(NODES);
    this.vmis = this.inform(VMIS, byNode);
    this.vmis.addIndex(BY_NODE, byNode);
    // A migration ending may let the next one of its VMI's node start.
    this.vmims = this.inform(VMIMS, (m) => byNode(this.vmis.get(vmiKeyOf(m)) ?? m));
    this.vmims.addIndex(VMI_INDEX, (m) => [vmiKeyOf(m)]);
    // The cluster default strategy or the taint key changing: the tainted nodes are looked at
    // again (every node: one tainted with the new key was not drained before).
    this.kubevirts = this.inform(KUBEVIRTS, () => this.nodes.list().map((n) => n.metadata.name));
  }

  private kubevirt(): KubeObject | undefined {
    return this.kubevirts.get(`${migrationConfig.KUBEVIRT_NAMESPACE}/${migrationConfig.KUBEVIRT_NAME}`);
  }

  protected async reconcile(name: string): Promise<void> {
    const kv = this.kubevirt();
    const key = migrationConfig.nodeDrainTaintKey(kv);
    if (!hasDrainTaint(this.nodes.get(name), key)) return;
    for (const vmi of this.vmis.byIndex(BY_NODE, name)) {
      if ((vmi.status as Obj | undefined)?.phase !== 'Running' || vmi.metadata.deletionTimestamp) continue;
      if (!wantsLiveMigration(vmi, kv) || migration.isActive(migration.stateOf(vmi))) continue;
      const mine = this.vmims.byIndex(VMI_INDEX, cacheKey(vmi));
      if (mine.some((m) => !FINAL.has(phaseOf(m)))) continue;
      const evacuations = mine.filter((m) => m.metadata.labels?.[EVACUATION_LABEL] === name);
      const lastFailed = evacuations
        .filter((m) => phaseOf(m) === 'Failed')
        .map((m) => Date.parse(String(m.metadata.creationTimestamp)))
        .sort((a, b) => b - a)[0];
      if (lastFailed && Date.now() - lastFailed < RETRY_MS) {
        this.queue.addAfter(name, RETRY_MS - (Date.now() - lastFailed) + 100);
        continue;
      }
      await this.evict(vmi, name, evacuations.length, key);
    }
  }

  /** One migration for the VMI; its name counts the evacuations so far, so a stale cache cannot make two. */
  private async evict(vmi: KubeObject, node: string, n: number, taint: string): Promise<void> {
    const ns = vmi.metadata.namespace!;
    const name = `${vmi.metadata.name.slice(0, 40)}-evacuation-${n}`;
    try {
      await this.client.create(
        VMIMS,
        {
          apiVersion: 'kubevirt.io/v1',
          kind: 'VirtualMachineInstanceMigration',
          metadata: { name, namespace: ns, labels: { [EVACUATION_LABEL]: node } },
          spec: { vmiName: vmi.metadata.name },
        },
        { namespace: ns },
      );
    } catch (err) {
      if (isStatusError(err, 'AlreadyExists')) return;
      throw err;
    }
    this.log(`evacuation: node ${node}: migrating ${ns}/${vmi.metadata.name} (${name})`);
    await this.events.record(vmi, 'Normal', 'EvictionTriggered', `node ${node} is draining (taint ${taint}): migration ${name} created`);
  }
}
