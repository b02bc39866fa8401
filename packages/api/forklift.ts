/**
 * The migration toolkit's conventions shared by its controller and the CLI (docs/forklift.md):
 * where a provider's inventory is published, and the per-VM status a Migration reports.
 */

/** The ConfigMap, in the provider's namespace and owned by it, holding its inventory as JSON under INVENTORY_KEY. */
export const inventoryConfigMapName = (provider: string): string => `${provider}-inventory`;
export const INVENTORY_KEY = 'inventory.json';
/** Label on the inventory ConfigMap: the provider's name. */
export const PROVIDER_LABEL = 'forklift.konveyor.io/provider';
/** The collections `vessel inventory PROVIDER KIND` lists. */
export const INVENTORY_KINDS = ['vms', 'networks', 'datastores', 'hosts'] as const;
export type InventoryKind = (typeof INVENTORY_KINDS)[number];

/** One unit of a Migration's progress (Forklift's task): a step, or a disk's transfer within one. */
export interface MigrationTask {
  name: string;
  phase: string;
  progress: { total: number; completed: number };
  annotations?: Record<string, string>;
  started?: string;
  completed?: string;
}
/** A step of a VM's pipeline (Initialize, DiskTransfer, VirtualMachineCreation...), with its disk tasks. */
export interface MigrationStep extends MigrationTask {
  tasks?: MigrationTask[];
  error?: { phase: string; reasons: string[] };
}
/** A VM in a Migration's `status.vms`. */
export interface MigrationVmStatus {
  id: string;
  name: string;
  namespace?: string;
  newName?: string;
  phase: string;
  pipeline: MigrationStep[];
  started?: string;
  completed?: string;
  error?: { phase: string; reasons: string[] };
  conditions?: Record<string, unknown>[];
}
