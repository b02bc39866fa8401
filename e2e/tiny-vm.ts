/**
 * VirtualMachines of the tiny test guest for end-to-end tests, and readers of what it prints:
 * its root disk is a linked clone of the `tiny` golden image; user data `#!/bin/sh` scripts run
 * at boot with their output on the console; `VESSEL-COUNTER n` is the on-disk counter.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

type Obj = Record<string, unknown>;

export interface TinyVmOptions { namespace?: string; runStrategy?: string; userData?: string; memory?: string; cores?: number; dataVolume?: string }

export function tinyVm(name: string, opts: TinyVmOptions = {}): Obj {
  const volumes: Obj[] = [{ name: 'root', dataVolume: { name: opts.dataVolume ?? `${name}-root` } }];
  if (opts.userData) volumes.push({ name: 'cloudinit', cloudInitNoCloud: { userData: opts.userData } });
  return {
    apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', metadata: { name, namespace: opts.namespace ?? 'default' },
    spec: {
      runStrategy: opts.runStrategy ?? 'Always',
      template: { spec: {
        terminationGracePeriodSeconds: 20,
        domain: { ...(opts.cores ? { cpu: { cores: opts.cores } } : {}), resources: { requests: { memory: opts.memory ?? '128Mi' } }, devices: { disks: [{ name: 'root', disk: { bus: 'virtio' } }, ...(opts.userData ? [{ name: 'cloudinit', disk: { bus: 'virtio' } }] : [])] } },
        volumes,
      } },
      dataVolumeTemplates: opts.dataVolume ? [] : [{ metadata: { name: `${name}-root` }, spec: { sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'vessel-images' }, storage: { resources: { requests: { storage: '1Gi' } } } } }],
    },
  };
}

/** Everything the VM's guest printed on serial, across its runs (serial.log is appended). */
export function serialLog(dataDir: string, namespace: string, name: string): Promise<string> {
  return readFile(join(dataDir, 'vms', namespace, name, 'serial.log'), 'utf8').catch(() => '');
}

/** The counter values the text shows, in order. */
export const counters = (text: string): number[] => [...text.matchAll(/VESSEL-COUNTER (\d+)/g)].map((m) => Number(m[1]));
