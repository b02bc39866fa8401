/**
 * A live migration's progress, published by the source agent (docs/migration.md, "Progress"):
 * what QEMU's `query-migrate` (and `query-block-jobs` for mirrored disks) says, written as JSON
 * in the migration object's `vessel.io/migration-progress` annotation at most once a second
 * while the guest is sent, and once more when it ends. The migration object rather than the VMI:
 * every agent and several controllers watch VMIs, few watch migrations.
 */
import { migration, refs } from '@vessel/api';
import type { Client } from '@vessel/client';
import type { Log } from '@vessel/runtime';
import type { QmpClient } from '../qmp/client.ts';

const { VMIMS } = refs;
type MigrationProgress = migration.MigrationProgress;

/** The parts of QEMU's MigrationInfo (`query-migrate`) read here. */
export interface MigrateInfo {
  status?: string;
  'total-time'?: number;
  downtime?: number;
  ram?: {
    transferred?: number;
    remaining?: number;
    total?: number;
    /** pages per second */
    'dirty-pages-rate'?: number;
    'page-size'?: number;
    /** megabits per second */
    mbps?: number;
    'dirty-sync-count'?: number;
  };
}

/** The parts of a `query-block-jobs` entry read here. */
export interface BlockJobInfo {
  type?: string;
  len?: number;
  offset?: number;
}

/** The progress `info` and the block jobs stand for (disk only when a mirror job runs). */
export function progressFrom(info: MigrateInfo, jobs: readonly BlockJobInfo[], at: Date): MigrationProgress {
  const ram = info.ram ?? {};
  const mirrors = jobs.filter((j) => j.type === 'mirror');
  const p: MigrationProgress = {
    at: at.toISOString(),
    status: info.status ?? 'none',
    memory: {
      total: ram.total ?? 0,
      remaining: ram.remaining ?? 0,
      transferred: ram.transferred ?? 0,
      dirtyRate: Math.round((ram['dirty-pages-rate'] ?? 0) * (ram['page-size'] ?? 4096)),
      throughputMbps: Math.round((ram.mbps ?? 0) * 10) / 10,
      ...(ram['dirty-sync-count'] !== undefined ? { iterations: ram['dirty-sync-count'] } : {}),
    },
  };
  if (info['total-time'] !== undefined) p.elapsedMs = info['total-time'];
  if (info.downtime !== undefined) p.downtimeMs = info.downtime;
  if (mirrors.length) {
    const total = mirrors.reduce((n, j) => n + (j.len ?? 0), 0);
    p.disk = { total, remaining: total - mirrors.reduce((n, j) => n + Math.min(j.offset ?? 0, j.len ?? 0), 0) };
  }
  return p;
}

/** Publishes one migration's progress; never fails the migration (a lost write is only a stale figure). */
export class ProgressPublisher {
  private last = 0;
  private writing?: Promise<void>;
  private name?: string;
  private warned = false;

  constructor(
    private readonly client: Client,
    private readonly namespace: string,
    private readonly migrationUid: string,
    private readonly qmp: QmpClient,
    private readonly log: Log,
    private readonly intervalMs = 1000,
  ) {}

  /** Called at every poll: publishes when the last write is a second old and none is in flight (the first poll publishes at once). */
  tick(info: MigrateInfo): void {
    if (this.writing || Date.now() - this.last < this.intervalMs) return;
    this.last = Date.now();
    this.writing = this.publish(info).finally(() => (this.writing = undefined));
  }

  /** The last figures (QEMU's final status, downtime), written after any write in flight. */
  async finish(info: MigrateInfo): Promise<void> {
    await this.writing;
    await this.publish(info);
  }

  private async publish(info: MigrateInfo): Promise<void> {
    try {
      // A finished migration's mirrors are over (and the source QEMU about to go).
      const final = ['completed', 'failed', 'cancelled'].includes(info.status ?? '');
      const jobs = final ? [] : await this.qmp.execute<BlockJobInfo[]>('query-block-jobs').catch(() => []);
      const progress = progressFrom(info, jobs, new Date());
      const name = await this.migrationName();
      if (!name) return;
      await this.client.patch(
        VMIMS,
        name,
        { metadata: { annotations: { [migration.PROGRESS_ANNOTATION]: JSON.stringify(progress) } } },
        { namespace: this.namespace },
      );
    } catch (e) {
      // Once per migration: the object may be gone (an abort deletes it).
      if (!this.warned) this.log(`migration ${this.migrationUid}: cannot publish its progress: ${e instanceof Error ? e.message : e}`);
      this.warned = true;
    }
  }

  /** The migration object's name: the VMI's migrationState has only its uid. */
  private async migrationName(): Promise<string | undefined> {
    if (this.name) return this.name;
    const list = await this.client.list(VMIMS, { namespace: this.namespace });
    this.name = list.items.find((m) => m.metadata?.uid === this.migrationUid)?.metadata?.name;
    return this.name;
  }
}
