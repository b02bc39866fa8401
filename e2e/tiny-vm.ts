/**
 * VirtualMachines of the tiny test guest for end-to-end tests, and readers of what it prints:
 * its root disk is a linked clone of the `tiny` golden image; user data `#!/bin/sh` scripts run
 * at boot with their output on the console; `VESSEL-COUNTER n` is the on-disk counter.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

type Obj = Record<string, unknown>;

export interface TinyVmOptions {
  namespace?: string;
  runStrategy?: string;
  userData?: string;
  memory?: string;
  cores?: number;
  dataVolume?: string;
  /** The root disk's storage class (e.g. `shared`, so any node can run the VM); default the cluster's. */
  storageClass?: string;
  /** Pins the VM to a node (nodeSelector `kubernetes.io/hostname`). */
  node?: string;
  /** The binding of the pod interface `default`; none: admission's default (masquerade). */
  binding?: 'bridge' | 'masquerade';
  /** Secondary NICs (bridge binding) on NetworkAttachmentDefinitions: interface name → NAD name. */
  multus?: Record<string, string>;
  /** The template's labels (what Services and NetworkPolicies select). */
  labels?: Record<string, string>;
  hostname?: string;
  subdomain?: string;
  terminationGracePeriodSeconds?: number;
  /** What a drain does with it (`LiveMigrate`, ...); none: KubeVirt's default. */
  evictionStrategy?: string;
}

export function tinyVm(name: string, opts: TinyVmOptions = {}): Obj {
  const volumes: Obj[] = [{ name: 'root', dataVolume: { name: opts.dataVolume ?? `${name}-root` } }];
  if (opts.userData) volumes.push({ name: 'cloudinit', cloudInitNoCloud: { userData: opts.userData } });
  const multus = Object.entries(opts.multus ?? {});
  const nics =
    opts.binding || multus.length
      ? {
          interfaces: [{ name: 'default', [opts.binding ?? 'masquerade']: {} }, ...multus.map(([iface]) => ({ name: iface, bridge: {} }))],
          networks: [{ name: 'default', pod: {} }, ...multus.map(([iface, networkName]) => ({ name: iface, multus: { networkName } }))],
        }
      : undefined;
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: opts.namespace ?? 'default' },
    spec: {
      runStrategy: opts.runStrategy ?? 'Always',
      template: {
        ...(opts.labels ? { metadata: { labels: opts.labels } } : {}),
        spec: {
          terminationGracePeriodSeconds: opts.terminationGracePeriodSeconds ?? 20,
          ...(opts.node ? { nodeSelector: { 'kubernetes.io/hostname': opts.node } } : {}),
          ...(opts.hostname ? { hostname: opts.hostname } : {}),
          ...(opts.subdomain ? { subdomain: opts.subdomain } : {}),
          ...(opts.evictionStrategy ? { evictionStrategy: opts.evictionStrategy } : {}),
          domain: {
            ...(opts.cores ? { cpu: { cores: opts.cores } } : {}),
            resources: { requests: { memory: opts.memory ?? '128Mi' } },
            devices: {
              disks: [{ name: 'root', disk: { bus: 'virtio' } }, ...(opts.userData ? [{ name: 'cloudinit', disk: { bus: 'virtio' } }] : [])],
              ...(nics ? { interfaces: nics.interfaces } : {}),
            },
          },
          ...(nics ? { networks: nics.networks } : {}),
          volumes,
        },
      },
      dataVolumeTemplates: opts.dataVolume
        ? []
        : [
            {
              metadata: { name: `${name}-root` },
              spec: {
                sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'vessel-images' },
                storage: { ...(opts.storageClass ? { storageClassName: opts.storageClass } : {}), resources: { requests: { storage: '1Gi' } } },
              },
            },
          ],
    },
  };
}

/**
 * The run directory of VM (or VMI) `name` on the agent of `dataDir`: `vms/<namespace>/<uid>`
 * (the VM's uid), found by the name in its vm.json; the most recently launched one if several.
 */
export async function runDirOf(dataDir: string, namespace: string, name: string): Promise<string | undefined> {
  const root = join(dataDir, 'vms', namespace);
  let best: { dir: string; at: string } | undefined;
  for (const d of await readdir(root).catch(() => [] as string[])) {
    const meta = JSON.parse(await readFile(join(root, d, 'vm.json'), 'utf8').catch(() => '{}')) as { name?: string; launchedAt?: string };
    if (meta.name === name && (!best || (meta.launchedAt ?? '') > best.at)) best = { dir: join(root, d), at: meta.launchedAt ?? '' };
  }
  return best?.dir;
}

/** Everything the VM's guest printed on serial, across its runs (serial.log is appended). */
export async function serialLog(dataDir: string, namespace: string, name: string): Promise<string> {
  const dir = await runDirOf(dataDir, namespace, name);
  return dir ? readFile(join(dir, 'serial.log'), 'utf8').catch(() => '') : '';
}

/** The counter values the text shows, in order. */
export const counters = (text: string): number[] => [...text.matchAll(/VESSEL-COUNTER (\d+)/g)].map((m) => Number(m[1]));
