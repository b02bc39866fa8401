/**
 * The migration toolkit's conventions shared by its controller and the CLI (docs/forklift.md):
 * where a provider's inventory is published, and its shape.
 */

/** The ConfigMap, in the provider's namespace and owned by it, holding its inventory as JSON under INVENTORY_KEY. */
export const inventoryConfigMapName = (provider: string): string => `${provider}-inventory`;
export const INVENTORY_KEY = 'inventory.json';
/** Label on the inventory ConfigMap: the provider's name. */
export const PROVIDER_LABEL = 'forklift.konveyor.io/provider';
/** The collections `vessel inventory PROVIDER KIND` lists. */
export const INVENTORY_KINDS = ['vms', 'networks', 'datastores', 'hosts'] as const;
export type InventoryKind = (typeof INVENTORY_KINDS)[number];
