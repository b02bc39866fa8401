/**
 * The indexes controllers and the agent ask for most, by name and function, so every informer
 * files objects under the same keys: `informer.addIndex(BY_CLAIM, byClaim)`, then
 * `informer.byIndex(BY_CLAIM, 'ns/claim')`.
 */
import { claimNames, storage } from '@vessel/api';
import type { IndexFunc } from './informer.ts';

export const BY_NAMESPACE = 'namespace';
export const BY_NODE = 'node';
export const BY_CLAIM = 'claim';
export const BY_OWNER = 'owner';
export const BY_DATASOURCE_CLAIM = 'dataSourceClaim';

/** A namespaced object under its namespace. */
export const byNamespace: IndexFunc = (o) => (o.metadata.namespace ? [o.metadata.namespace] : []);

/** The node an object is on: a VMI's status.nodeName, or a claim's selected node. */
export const byNode: IndexFunc = (o) => {
  const node = (o.status as { nodeName?: string } | undefined)?.nodeName ?? o.metadata.annotations?.[storage.SELECTED_NODE];
  return node ? [node] : [];
};

/** A VM or VMI under each claim its volumes use, as "namespace/claim" (a claim's cache key). */
export const byClaim: IndexFunc = (o) => claimNames(o).map((c) => `${o.metadata.namespace}/${c}`);

/** An object under the uid of each of its owners. */
export const byOwner: IndexFunc = (o) => (o.metadata.ownerReferences ?? []).map((r) => r.uid);

/** A DataSource under the claim its `spec.source.pvc` names, as "namespace/claim" (the claim's cache key). */
export const byDataSourceClaim: IndexFunc = (ds) => {
  const pvc = (ds.spec as { source?: { pvc?: { name?: string; namespace?: string } } } | undefined)?.source?.pvc;
  return pvc?.name ? [`${pvc.namespace ?? ds.metadata.namespace}/${pvc.name}`] : [];
};
