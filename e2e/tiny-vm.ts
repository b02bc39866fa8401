/**
 * VirtualMachines of the tiny test guest for end-to-end tests, and readers of what it prints:
 * its root disk is a linked clone of the `tiny` golden image; user data `#!/bin/sh` scripts run
 * at boot with their output on the console; `VESSEL-COUNTER n` is the on-disk counter; recordWriter's
 * script writes numbered records to a disk's slots (the warm-copy tests); sector records, their
 * check and the local-pool claim are the local-disk migration tests'.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

type Obj = Record<string, unknown>;
const execFileP = promisify(execFile);

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
  /** The template's annotations (e.g. `migration.vessel.io/tcg-live`). */
  annotations?: Record<string, string>;
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
        ...(opts.labels || opts.annotations ? { metadata: { labels: opts.labels, annotations: opts.annotations } } : {}),
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

/** The records' layout on the disk recordWriter writes: 64 slots 64 KiB apart (one QEMU dirty-bitmap cluster each). */
const RECORD_SLOTS = 64;
const RECORD_SLOT_BYTES = 64 * 1024;

/**
 * A user-data script that writes numbered records (`VESSEL-REC 00000042`) round-robin to the 64
 * slots of a 64 MiB disk, each flushed (fsync) before it prints `VESSEL-WROTE n`, without pause:
 * the warm-copy tests' guest load (a round copies at most 64 clusters, 4 MiB). The disk is the
 * one whose virtio serial is `serial`, or by default the one of 64 MiB (131072 sectors).
 */
export function recordWriter(disk: { serial: string } | { sectors: number } = { sectors: 131072 }): string {
  const test = 'serial' in disk ? `"$(cat $d/serial 2>/dev/null)" = ${disk.serial}` : `"$(cat $d/size)" = ${disk.sectors}`;
  return `#!/bin/sh
for d in /sys/block/vd*; do [ ${test} ] && dev=/dev/\${d##*/}; done
echo "VESSEL-WARM-DEV $dev"
n=0
while :; do
  n=$((n + 1))
  printf 'VESSEL-REC %08d\\n' $n | dd of=$dev bs=512 seek=$(( (n % ${RECORD_SLOTS}) * ${RECORD_SLOT_BYTES / 512} )) count=1 conv=sync,notrunc,fsync 2>/dev/null
  echo "VESSEL-WROTE $n"
done
`;
}

/** The record numbers recordWriter's guest printed (written and flushed), in order. */
export const recordsWritten = (text: string): number[] => [...text.matchAll(/VESSEL-WROTE (\d+)/g)].map((m) => Number(m[1]));

/** Record `n` as it lies in its slot. */
export const recordText = (n: number): string => `VESSEL-REC ${String(n).padStart(8, '0')}\n`;

/** What slot of record `n` holds in the disk's raw bytes (compare with recordText(n)). */
export const recordSlot = (disk: Buffer, n: number): string =>
  disk.subarray((n % RECORD_SLOTS) * RECORD_SLOT_BYTES, (n % RECORD_SLOTS) * RECORD_SLOT_BYTES + 20).toString('latin1');

/**
 * A PersistentVolumeClaim on the node-local pool (class `local`, ReadWriteOnce). Without `node`
 * it waits for its first consumer, so it lands on the node of the VM that uses it; with `node`
 * it is made there at once (`volume.kubernetes.io/selected-node`, e.g. to hotplug it).
 */
export function localClaim(name: string, size: string, opts: { namespace?: string; node?: string } = {}): Obj {
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: {
      name,
      namespace: opts.namespace ?? 'default',
      ...(opts.node ? { annotations: { 'volume.kubernetes.io/selected-node': opts.node } } : {}),
    },
    spec: { storageClassName: 'local', accessModes: ['ReadWriteOnce'], resources: { requests: { storage: size } } },
  };
}

/**
 * Sector records (the local-disk migration tests): record i (`REC i <hash of i>`, padded to
 * 512 bytes) lies at sector `first + i` of a disk, flushed there by the guest (`dd conv=fsync`),
 * which prints every 25 records `VESSEL-SUM[-tag] n md5` of the n sectors written so far.
 */
export const sectorRecord = (i: number): string => `REC ${String(i).padStart(8, '0')} ${createHash('md5').update(`${i}\n`).digest('hex').slice(0, 16)}\n`;

/** The shell function `rec DEV I FIRST` that writes record I at sector FIRST+I of DEV, flushed (the guest side of sectorRecord). */
export const SECTOR_RECORD_SH = `rec() { printf 'REC %08d %s\\n' $2 "$(echo $2 | md5sum | cut -c1-16)" | dd of=$1 bs=512 seek=$(($3 + $2)) conv=notrunc,sync,fsync 2>/dev/null; }`;

/** The checksums `VESSEL-SUM[-tag] n md5` the guest printed, in order. */
export const sectorSums = (text: string, tag = ''): { n: number; md5: string }[] =>
  [...text.matchAll(new RegExp(`VESSEL-SUM${tag ? `-${tag}` : ''} (\\d+) ([0-9a-f]{32})`, 'g'))].map((m) => ({ n: Number(m[1]), md5: m[2] }));

/**
 * Checks a qcow2 file (read with `qemu-img convert -U` beside its running QEMU) against a
 * checksum the guest printed: records 0..n-1 at sectors first.., in order, their md5 the
 * guest's. Throws (an AssertionError) naming the first bad record and whether the guest's
 * checksum matches the file's (a write lost in the move) or not (the file lags its QEMU).
 */
export async function checkSectorRecords(file: string, sum: { n: number; md5: string }, opts: { first?: number; what?: string } = {}): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'vessel-records-'));
  try {
    const raw = join(tmp, 'disk.raw');
    await execFileP('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', file, raw]);
    const first = (opts.first ?? 0) * 512;
    const bytes = (await readFile(raw)).subarray(first, first + sum.n * 512);
    const md5 = createHash('md5').update(bytes).digest('hex');
    for (let i = 0; i < sum.n; i++) {
      const rec = bytes.subarray(i * 512, i * 512 + sectorRecord(i).length).toString('latin1');
      assert.equal(
        rec,
        sectorRecord(i),
        `${opts.what ?? file}: record ${i} of ${sum.n} (the guest's checksum ${md5 === sum.md5 ? 'matches' : 'differs from'} the file's)`,
      );
    }
    assert.equal(md5, sum.md5, `${opts.what ?? file}: the md5 of ${sum.n} records is the guest's`);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
