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

const { DATAVOLUMES, PVCS, SECRETS, VMS, VMIS } = refs;
const { WARM_EXPORT, WARM_EXPORT_STATUS, WARM_COPY, WARM_COPY_STATUS, warmPskSecretName } = forklift;
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

const parse = <T>(v: string | undefined): T | undefined => {
  try {
    return v ? (JSON.parse(v) as T) : undefined;
  } catch {
    return undefined;
  }
};

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
  const poll = src.pollMs ?? 500;
  const answerTimeout = src.answerTimeoutMs ?? 120_000;
  let disks: WarmDisk[] = [];
  const targets = new Map<string, forklift.WarmExportStatus>();
  // Rounds are numbered from the clock: a restarted controller never reuses a number.
  let seq = Date.now();
  const wait = async <T>(what: string, check: () => Promise<T | undefined>, timeoutMs = answerTimeout): Promise<T> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      src.checkpoint?.();
      const v = await check();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, poll));
    }
  };
  const vmi = () => client.get(VMIS, src.name, { namespace: src.namespace });
  const patchVmi = (ann: Record<string, string | null>) => client.patch(VMIS, src.name, { metadata: { annotations: ann } }, { namespace: src.namespace });
  const exportOf = async (d: WarmDisk): Promise<forklift.WarmExportStatus> => {
    const known = targets.get(d.claim);
    if (known) return known;
    const req: forklift.WarmExportRequest = { id: src.id };
    await client.patch(PVCS, d.claim, { metadata: { annotations: { [WARM_EXPORT]: JSON.stringify(req) } } }, { namespace: src.targetNamespace });
    const st = await wait(`the export of claim ${d.claim}`, async () => {
      const pvc = await client.get(PVCS, d.claim, { namespace: src.targetNamespace });
      const s = parse<forklift.WarmExportStatus>(pvc.metadata?.annotations?.[WARM_EXPORT_STATUS]);
      return s?.id === src.id && s.phase !== 'Stopped' ? s : undefined;
    });
    if (st.phase !== 'Ready') throw new Error(`claim ${d.claim} cannot be exported: ${st.message ?? st.phase}`);
    if (!st.secret) throw new Error(`the export of claim ${d.claim} names no PSK secret`);
    targets.set(d.claim, st);
    return st;
  };

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
      const dv = {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataVolume',
        metadata: { name: d.claim, namespace: src.targetNamespace, labels: src.labels ?? {} },
        spec: {
          source: { blank: {} },
          storage: { resources: { requests: { storage: String(d.size) } }, ...(src.storageClass ? { storageClassName: src.storageClass } : {}) },
        },
      };
      try {
        await client.create(DATAVOLUMES, dv, { namespace: src.targetNamespace });
      } catch (e) {
        if (!isStatusError(e, 'AlreadyExists')) throw e;
      }
      await wait(`DataVolume ${d.claim}`, async () => {
        const phase = o((await client.get(DATAVOLUMES, d.claim, { namespace: src.targetNamespace })).status).phase;
        if (phase === 'Failed') throw new Error(`DataVolume ${d.claim} failed`);
        return phase === 'Succeeded' ? true : undefined;
      });
    },

    async copy(d, mode, progress) {
      const t = await exportOf(d);
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
      for (const d of disks) {
        const req: forklift.WarmExportRequest = { id: src.id, stop: true };
        await client
          .patch(PVCS, d.claim, { metadata: { annotations: { [WARM_EXPORT]: JSON.stringify(req) } } }, { namespace: src.targetNamespace })
          .catch(() => undefined);
        // The agent deletes it when the export stops; this covers an agent that is gone.
        await client.delete(SECRETS, warmPskSecretName(src.id, d.claim), { namespace: src.targetNamespace }).catch(() => undefined);
      }
      targets.clear();
      // A source still running (a cancel) loses its bitmaps.
      await patchVmi({ [WARM_COPY]: JSON.stringify({ id: src.id, seq: ++seq, end: true } satisfies forklift.WarmCopyRequest) }).catch(() => undefined);
    },

    async discard() {
      const ns = src.targetNamespace;
      const labels = Object.entries(src.labels ?? {});
      // This run's disks, and (a cancel before Initialize knew them) the DataVolumes labelled for this VM.
      const names = new Set(disks.map((d) => d.claim));
      if (labels.length)
        for (const dv of (await client.list(DATAVOLUMES, { namespace: ns, labelSelector: labels.map(([k, v]) => `${k}=${v}`).join(',') })).items)
          names.add(dv.metadata!.name!);
      const gone = (e: unknown) => {
        if (!isStatusError(e, 'NotFound')) throw e;
      };
      for (const name of names) {
        const dv = await client.get(DATAVOLUMES, name, { namespace: ns }).catch((e: unknown) => gone(e));
        // Only what the run made (its labels): a DataVolume of that name the user made stays.
        if (!dv || labels.some(([k, v]) => dv.metadata?.labels?.[k] !== v)) continue;
        await client.delete(DATAVOLUMES, name, { namespace: ns }).catch(gone);
        await client.delete(PVCS, name, { namespace: ns }).catch(gone);
        await client.delete(SECRETS, warmPskSecretName(src.id, name), { namespace: ns }).catch(gone);
      }
    },
  };
}
