/**
 * Shared by e2e/migration-settings.e2e.test.ts and e2e/migration-settings.scenario.test.ts: a
 * two-node dev cluster with the tiny image on the shared pool, the guest that dirties its
 * memory, and the probes both files use (VMI status, the guest's rounds, QEMUs, a migration
 * followed to its end).
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { migration } from '@vessel/api';
import type { ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startCluster, type TestCluster } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';

export const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
export const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
export const VMIM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstancemigrations', namespaced: true };
export const KV: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'kubevirts', namespaced: true };
export const ns = 'default';
export const NAME = 'busy';
export type Obj = Record<string, unknown>;
export type MigrationState = {
  sourceNode?: string;
  targetNode?: string;
  completed?: boolean;
  failed?: boolean;
  failureReason?: string;
  mode?: string;
  migrationPolicyName?: string;
  migrationConfiguration?: Obj;
};
export type VmiStatus = { phase?: string; nodeName?: string; migrationState?: MigrationState; conditions?: { type: string; status: string }[] };

/**
 * The VMI annotation that keeps a guest under TCG running during its migration (live precopy):
 * these tests are about what a running, dirtying guest does to a migration. Without it a guest
 * under TCG pauses for the transfer (docs/migration.md "TCG: the guest pauses for the transfer").
 */
export const LIVE_UNDER_TCG = { [migration.TCG_LIVE_ANNOTATION]: 'true' };

/**
 * Rewrites 24 MiB of a tmpfs forever with 1 MiB of random bytes (not zero pages, which QEMU
 * sends for nearly nothing; copied, as urandom itself is slow under TCG), counting the rounds.
 */
export const USER_DATA = [
  '#!/bin/sh',
  'mkdir -p /mnt/dirty && mount -t tmpfs -o size=40m tmpfs /mnt/dirty',
  'dd if=/dev/urandom of=/mnt/dirty/r bs=64k count=16 2>/dev/null',
  '(n=0; while true; do i=0; while [ $i -lt 24 ]; do dd if=/mnt/dirty/r of=/mnt/dirty/x bs=1024k count=1 seek=$i conv=notrunc 2>/dev/null; i=$((i+1)); done; n=$((n+1)); echo "VESSEL-DIRTY $n"; done) &',
  '',
].join('\n');

/** The dirtying guest's VM (USER_DATA, bridge, shared pool), live under TCG. */
export const busyVm = (labels?: Record<string, string>): Obj =>
  tinyVm(NAME, {
    namespace: ns,
    binding: 'bridge',
    userData: USER_DATA,
    storageClass: 'shared',
    terminationGracePeriodSeconds: 5,
    labels,
    annotations: LIVE_UNDER_TCG,
  });

/** The cluster and the probes; `start` in a `before` hook. */
export class DirtyGuestCluster {
  c!: TestCluster;

  async start(): Promise<TestCluster> {
    this.c = await startCluster({ nodes: 2 });
    await ensureTinyImage(this.c.client, () => undefined, { storageClass: 'shared' });
    return this.c;
  }

  vmiStatus = async (): Promise<VmiStatus> => ((await this.c.client.get(VMI, NAME, { namespace: ns }).catch(() => undefined))?.status ?? {}) as VmiStatus;
  agentOf = (name: string) => this.c.nodes.agents.find((a) => a.nodeName === name)!;
  dirtyRounds = async (node: string): Promise<number> => [...(await serialLog(this.agentOf(node).dataDir, ns, NAME)).matchAll(/VESSEL-DIRTY (\d+)/g)].length;

  qemus = async (): Promise<number> => {
    let n = 0;
    for (const d of await readdir('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      const cmd = await readFile(join('/proc', d, 'cmdline'), 'utf8').catch(() => '');
      if (cmd.startsWith('qemu-system') && cmd.includes(this.c.dataDir)) n++;
    }
    return n;
  };

  /** Waits for the guest Running, live-migratable and dirtying its memory; returns its node. */
  runningAndDirtying = async (): Promise<string> => {
    const running = await eventually(
      'the VMI Running and live-migratable',
      async () => {
        const s = await this.vmiStatus();
        return s.phase === 'Running' && s.conditions?.find((x) => x.type === 'LiveMigratable')?.status === 'True' ? s : undefined;
      },
      300_000,
    );
    const source = running.nodeName!;
    await eventually('the guest dirtying its memory', async () => ((await this.dirtyRounds(source)) >= 1 ? true : undefined), 600_000, 500).catch(
      async (e: unknown) => {
        console.log(`# serial log of ${NAME} on ${source}:\n${(await serialLog(this.agentOf(source).dataDir, ns, NAME)).slice(-2000)}`);
        throw e;
      },
    );
    return source;
  };

  migrateAndWait = async (name: string): Promise<{ phase: string; migrationState: MigrationState }> => {
    await this.c.client.create(
      VMIM,
      { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: ns }, spec: { vmiName: NAME } },
      { namespace: ns },
    );
    return eventually(
      `${name} finished`,
      async () => {
        const s = ((await this.c.client.get(VMIM, name, { namespace: ns })).status ?? {}) as { phase?: string; migrationState?: MigrationState };
        return s.phase === 'Succeeded' || s.phase === 'Failed' ? { phase: s.phase, migrationState: s.migrationState ?? {} } : undefined;
      },
      300_000,
      300,
    );
  };
}
