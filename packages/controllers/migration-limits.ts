/**
 * KubeVirt's parallel migration limits (parallelMigrationsPerCluster,
 * parallelOutboundMigrationsPerNode): which waiting migration may start now. Pure, so the
 * migration controller's per-VMI reconciles agree on one cluster-wide order: waiting migrations
 * take free slots in creation order, each only where its source node has a slot too.
 */

export interface SlotLimits {
  perCluster: number;
  perNode: number;
}

/** A migration holding a slot (started, not ended) from `source`. */
export interface RunningMigration {
  uid: string;
  source: string;
}

/** A migration waiting for a slot; `order` sorts them by creation (timestamp, then name). */
export interface WaitingMigration {
  uid: string;
  source: string;
  order: string;
}

/** Why a waiting migration does not get a slot: the limit that holds it, with that limit's value (and the source node for the per-node one). */
export type SlotWait = { limit: 'perCluster'; max: number } | { limit: 'perNode'; max: number; node: string } | { limit: 'notListed' };

/** Whether waiting migration `uid` gets a slot now; older waiting ones are served first. */
export function mayStart(uid: string, running: readonly RunningMigration[], waiting: readonly WaitingMigration[], limits: SlotLimits): boolean {
  return slotWait(uid, running, waiting, limits) === undefined;
}

/** The limit that keeps waiting migration `uid` waiting now, or undefined when it gets a slot (the rule of mayStart). */
export function slotWait(uid: string, running: readonly RunningMigration[], waiting: readonly WaitingMigration[], limits: SlotLimits): SlotWait | undefined {
  let total = running.length;
  const perNode = new Map<string, number>();
  for (const r of running) perNode.set(r.source, (perNode.get(r.source) ?? 0) + 1);
  const cluster: SlotWait = { limit: 'perCluster', max: limits.perCluster };
  for (const w of [...waiting].sort((a, b) => a.order.localeCompare(b.order) || a.uid.localeCompare(b.uid))) {
    if (total >= limits.perCluster) return cluster;
    const n = perNode.get(w.source) ?? 0;
    if (n >= limits.perNode) {
      if (w.uid === uid) return { limit: 'perNode', max: limits.perNode, node: w.source };
      continue;
    }
    if (w.uid === uid) return undefined;
    // An older one takes this slot.
    total++;
    perNode.set(w.source, n + 1);
  }
  // Not among the waiting ones (no Running source): it waits, for no limit's sake.
  return { limit: 'notListed' };
}
