/**
 * Instancetype benchmark (docs/instancetypes.md): what sizing a VM by an instancetype and a
 * preference costs at start. The API server and controllers run in this process (no agent: the
 * VMI is the end point, nothing boots). Each round creates the VM `vessel create vm
 * --instancetype u1.small --preference fedora --volume-pvc src:disk` prints, and the same VM written
 * out by hand (cpu, memory, virtio disk and NIC, EFI as the preference gives them), and times
 * create → the VMI exists (seen by polling every 2 ms), then deletes both. Rounds alternate the
 * order. Both mount one pre-made claim: a --volume-import clone costs the same for both and
 * would only add noise. Goal: instancetype − by hand ≤ 50 ms at p50.
 *
 *   node --import tsx bench/instancetype.bench.ts      env: BENCH_IT_N (20)
 */
import { isNotFound, type KubeObject, type ResourceRef } from '@vessel/client';
import { startVessel } from '../e2e/harness.ts';
import { createVmManifest } from '../packages/cli/create-vm.ts';
import { envInt, errText, isMain, ms, now, percentile, printResult, PVCS, ratio, sleep, type BenchResult } from './lib.ts';

const VMS: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMIS: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const NS = 'default';

function byHand(name: string): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name },
    spec: {
      runStrategy: 'Always',
      template: {
        spec: {
          domain: {
            cpu: { sockets: 1, cores: 1, threads: 1 },
            memory: { guest: '2Gi' },
            devices: { disks: [{ name: 'disk', disk: { bus: 'virtio' } }], rng: {} },
            firmware: { bootloader: { efi: { secureBoot: true } } },
            features: { smm: {} },
          },
          terminationGracePeriodSeconds: 180,
          volumes: [{ name: 'disk', persistentVolumeClaim: { claimName: 'disk' } }],
        },
      },
    },
  } as KubeObject;
}

export async function runInstancetype(): Promise<BenchResult> {
  const started = now();
  const n = envInt('BENCH_IT_N', 20);
  const problems: string[] = [];
  const v = await startVessel();
  const times = { it: [] as number[], hand: [] as number[] };
  try {
    await v.client.create(
      PVCS,
      {
        apiVersion: 'v1',
        kind: 'PersistentVolumeClaim',
        metadata: { name: 'disk' },
        spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
      },
      { namespace: NS },
    );
    const once = async (kind: 'it' | 'hand', i: number) => {
      const name = `${kind}-${i}`;
      const vm =
        kind === 'it' ? (createVmManifest({ name, instancetype: 'u1.small', preference: 'fedora', volumePvc: ['src:disk'] }) as KubeObject) : byHand(name);
      const t0 = now();
      await v.client.create(VMS, vm, { namespace: NS });
      for (;;) {
        const vmi = await v.client.get(VMIS, name, { namespace: NS }).catch((e: unknown) => (isNotFound(e) ? undefined : Promise.reject(e)));
        if (vmi) break;
        if (now() - t0 > 30_000) throw new Error(`no VMI for ${name} after 30 s`);
        await sleep(2);
      }
      times[kind].push(now() - t0);
      await v.client.delete(VMS, name, { namespace: NS });
    };
    for (let i = 0; i < n; i++) {
      try {
        if (i % 2 === 0) {
          await once('it', i);
          await once('hand', i);
        } else {
          await once('hand', i);
          await once('it', i);
        }
      } catch (e) {
        problems.push(errText(e));
        break;
      }
    }
  } finally {
    await v.close();
  }
  const p50 = (xs: number[]) =>
    percentile(
      [...xs].sort((a, b) => a - b),
      50,
    );
  const p95 = (xs: number[]) =>
    percentile(
      [...xs].sort((a, b) => a - b),
      95,
    );
  const [a, b] = [p50(times.it), p50(times.hand)];
  if (a - b > 50) problems.push(`instancetype VMs start ${ms(a - b)} later than by hand at p50 (goal ≤ 50 ms)`);
  return {
    bench: 'instancetype',
    figures: [
      {
        name: 'create → VMI, p50',
        ratio: ratio(a, b),
        detail: `instancetype ${ms(a)} vs by hand ${ms(b)} (Δ ${ms(a - b)}; ${times.it.length}+${times.hand.length} runs)`,
      },
      {
        name: 'create → VMI, p95',
        ratio: ratio(p95(times.it), p95(times.hand)),
        detail: `instancetype ${ms(p95(times.it))} vs by hand ${ms(p95(times.hand))}`,
      },
    ],
    problems,
    seconds: (now() - started) / 1000,
  };
}

if (isMain(import.meta.url)) {
  const r = await runInstancetype();
  printResult(r);
  process.exit(r.problems.length ? 1 : 0);
}
