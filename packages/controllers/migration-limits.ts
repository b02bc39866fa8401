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

/** Whether waiting migration `uid` gets a slot now; older waiting ones are served first. */
export function mayStart(uid: string, running: readonly RunningMigration[], waiting: readonly WaitingMigration[], limits: SlotLimits): boolean {
  let total = running.length;
  const perNode = new Map<string, number>();
  for (const r of running) perNode.set(r.source, (perNode.get(r.source) ?? 0) + 1);
  for (const w of [...waiting].sort((a, b) => a.order.localeCompare(b.order) || a.uid.localeCompare(b.uid))) {
    if (total >= limits.perCluster) return false;
    const n = perNode.get(w.source) ?? 0;
    if (n >= limits.perNode) {
      if (w.uid === uid) return false;
      continue;
    }
    if (w.uid === uid) return true;
    // An older one takes this slot.
    total++;
    perNode.set(w.source, n + 1);
  }
  return false;
}
