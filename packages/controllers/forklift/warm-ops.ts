/**
 * WarmOps for a running VM of this cluster (the `openshift` provider's source when it names this
 * cluster or one of its namespaces; docs/forklift.md, "Warm migration"): the target volumes are
 * blank DataVolumes, the rounds are asked of the agents through reserved annotations (the target
 * claim's agent exports its volume over NBD with TLS-PSK; the source VMI's agent pushes its disk
 * with QEMU's dirty bitmap and blockdev-backup: packages/agent/vms/warm-controller.ts), the
 * source is paused for the last round, then stopped; the target VM is the source's template on
 * the copied claims.
 */
import { forklift, parseQuantity, refs, type KubeObject } from '@vessel/api';
import type { Client } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import type { WarmDisk, WarmOps } from './warm.ts';
import { parseAnnotation as parse, WarmTargets } from './warm-targets.ts';

const { PVCS, VMS, VMIS } = refs;
const { WARM_COPY, WARM_COPY_STATUS } = forklift;
type Obj = Record<string, unknown>;
const o = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});

export interface ClusterWarmSource {
  /** The source VM on this cluster. */
  namespace: string;
  name: string;
  /** Where the target VM and its claims go. */
  targetNamespace: string;
  targetName: string;
  /** Who asks (migration uid and VM id): the agents answer this id. */
  id: string;
  /** The target claims' StorageClass (the StorageMap's); none: the cluster's default. */
  storageClass?: string;
  /** Start the target VM (Forklift's targetPowerState); default true. */
  start?: boolean;
  labels?: Record<string, string>;
  pollMs?: number;
  /** How long an agent may take to answer before a call fails (not a round's copy, which has no limit). */
  answerTimeoutMs?: number;
  /** Throws to end a wait (cancel, controller stopping). */
  checkpoint?: () => void;
}

/** A claim's capacity in bytes from its status. */
function capacity(pvc: KubeObject): number | undefined {
  const s = o(o(pvc.status).capacity).storage;
  if (typeof s !== 'string') return undefined;
  try {
    return parseQuantity(s);
  } catch {
    return undefined;
  }
}

export function clusterWarmOps(client: Client, src: ClusterWarmSource): WarmOps {
  const answerTimeout = src.answerTimeoutMs ?? 120_000;
  let disks: WarmDisk[] = [];
  const targets = new WarmTargets(client, src);
  const wait = targets.wait.bind(targets);
  // Rounds are numbered from the clock: a restarted controller never reuses a number.
  let seq = Date.now();
  const vmi = () => client.get(VMIS, src.name, { namespace: src.namespace });
  const patchVmi = (ann: Record<string, string | null>) => client.patch(VMIS, src.name, { metadata: { annotations: ann } }, { namespace: src.namespace });

  return {
    async initialize() {
      const v = await vmi();
      if (o(v.status).phase !== 'Running') throw new Error(`VM ${src.namespace}/${src.name} is not running (a warm migration copies a running VM)`);
      disks = [];
      for (const vol of (o(v.spec).volumes as Obj[] | undefined) ?? []) {
        const claim = (o(vol.dataVolume).name ?? o(vol.persistentVolumeClaim).claimName) as string | undefined;
        if (!claim) continue; // cloud-init and the like are carried in the template
        const size = capacity(await client.get(PVCS, claim, { namespace: src.namespace }));
        if (!size) throw new Error(`claim ${claim} has no capacity in its status`);
        disks.push({ volume: String(vol.name), size, claim: `${src.targetName}-${String(vol.name)}`.slice(0, 63) });
      }
      if (!disks.length) throw new Error(`VM ${src.namespace}/${src.name} has no disk on a claim`);
      return disks;
    },

    async allocate(d) {
      await targets.allocate(d);
    },

    async copy(d, mode, progress) {
      const t = await targets.exportOf(d);
      const n = ++seq;
      const req: forklift.WarmCopyRequest = {
        id: src.id,
        seq: n,
        volume: d.volume,
        mode,
        // The PSK stays in its Secret: the VMI's readers see only where it is.
        target: { address: t.address!, export: t.export!, secret: { namespace: src.targetNamespace, name: t.secret! } },
      };
      await patchVmi({ [WARM_COPY]: JSON.stringify(req) });
      // The copy itself has no time limit (a large disk); an agent that never answers does.
      const started = Date.now();
      const st = await wait(
        `round ${n} of ${d.volume}`,
        async () => {
          const s = parse<forklift.WarmCopyStatus>((await vmi()).metadata?.annotations?.[WARM_COPY_STATUS]);
          if (s?.id !== src.id || s.seq !== n) {
            if (Date.now() - started > answerTimeout) throw new Error(`the agent did not take round ${n} of ${d.volume}`);
            return undefined;
          }
          if (s.phase === 'Running') {
            progress(s.done ?? 0, s.total ?? 0);
            return undefined;
          }
          return s;
        },
        Number.POSITIVE_INFINITY,
      );
      if (st.phase === 'Failed') throw Object.assign(new Error(st.message ?? 'the round failed'), { code: st.code });
      progress(st.total ?? 0, st.total ?? 0);
      return { bytes: st.total ?? 0, deltaId: `${d.volume}@${n}` };
    },

    async quiesceSource() {
      const v = await vmi();
      const paused = ((o(v.status).conditions as Obj[] | undefined) ?? []).some((c) => c.type === 'Paused' && c.status === 'True');
      if (!paused)
        await client.request(
          'PUT',
          `/apis/subresources.kubevirt.io/v1/namespaces/${encodeURIComponent(src.namespace)}/virtualmachineinstances/${encodeURIComponent(src.name)}/pause`,
          { body: {} },
        );
    },

    async stopSource() {
      await client.patch(VMS, src.name, { spec: { runStrategy: 'Halted' } }, { namespace: src.namespace });
      await wait(
        `VMI ${src.namespace}/${src.name} to go`,
        async () =>
          client.get(VMIS, src.name, { namespace: src.namespace }).then(
            () => undefined,
            (e: unknown) => {
              if (isStatusError(e, 'NotFound')) return true;
              throw e;
            },
          ),
        10 * 60_000,
      );
    },

    async createTarget() {
      const vm = await client.get(VMS, src.name, { namespace: src.namespace });
      const template = structuredClone(o(o(vm.spec).template)) as Obj;
      const spec = o(template.spec);
      const byVolume = new Map(disks.map((d) => [d.volume, d.claim]));
      spec.volumes = ((spec.volumes as Obj[] | undefined) ?? []).map((v) =>
        byVolume.has(String(v.name)) ? { name: v.name, dataVolume: { name: byVolume.get(String(v.name)) } } : v,
      );
      const target = {
        apiVersion: 'kubevirt.io/v1',
        kind: 'VirtualMachine',
        metadata: { name: src.targetName, namespace: src.targetNamespace, labels: src.labels ?? {} },
        spec: { runStrategy: src.start === false ? 'Halted' : 'Always', template },
      };
      try {
        await client.create(VMS, target, { namespace: src.targetNamespace });
      } catch (e) {
        if (!isStatusError(e, 'AlreadyExists')) throw e;
      }
    },

    async release() {
      await targets.release(disks.map((d) => d.claim));
      // A source still running (a cancel) loses its bitmaps.
      await patchVmi({ [WARM_COPY]: JSON.stringify({ id: src.id, seq: ++seq, end: true } satisfies forklift.WarmCopyRequest) }).catch(() => undefined);
    },

    async discard() {
      await targets.discard(disks.map((d) => d.claim));
    },
  };
}
