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
/** Hook annotation naming a script the administrator registered (a file name in `--forklift-hook-dir`). */
export const HOOK_SCRIPT_ANNOTATION = 'forklift.vessel.io/hook-script';
/** Hook annotation naming an http(s) URL the hook's payload is POSTed to. */
export const HOOK_URL_ANNOTATION = 'forklift.vessel.io/hook-url';
/** What a registered script's name may be: one path component, no `..`. */
export const HOOK_SCRIPT_NAME = /^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

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
