/**
 * The target side of every warm migration (docs/forklift.md, "Warm migration"), whatever the
 * source: the blank DataVolumes the rounds write into, the NBD export of each target claim asked
 * of the agent holding its volume (reserved annotations; the PSK in a Secret the agent writes),
 * and their end: released (exports stopped, Secrets gone) or, on a cancel, discarded (the
 * DataVolumes and claims the run made deleted too). Used by warm-ops.ts (a VM of this cluster)
 * and vsphere/warm.ts.
 */
import { forklift, refs } from '@vessel/api';
import type { Client } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import type { WarmDisk } from './warm.ts';

const { DATAVOLUMES, PVCS, SECRETS } = refs;
const { WARM_EXPORT, WARM_EXPORT_STATUS, WARM_PSK_SECRET_TYPE, warmPskSecretName } = forklift;
type Obj = Record<string, unknown>;
const o = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});

export const parseAnnotation = <T>(v: string | undefined): T | undefined => {
  try {
    return v ? (JSON.parse(v) as T) : undefined;
  } catch {
    return undefined;
  }
};

export interface WarmTargetOptions {
  targetNamespace: string;
  /** Who asks (migration uid and VM id): the agents answer this id. */
  id: string;
  /** The target claims' StorageClass (the StorageMap's); none: the cluster's default. */
  storageClass?: string;
  /** The run's labels: what discard recognises as made by this run. */
  labels?: Record<string, string>;
  pollMs?: number;
  /** How long an agent may take to answer. */
  answerTimeoutMs?: number;
  /** Throws to end a wait (cancel, controller stopping). */
  checkpoint?: () => void;
}

/** A target claim's export with its PSK, read from the agent's Secret (for a writer that connects itself). */
export interface ExportWithKey {
  address: string;
  export: string;
  identity: string;
  key: string;
}

export class WarmTargets {
  private readonly exports = new Map<string, forklift.WarmExportStatus>();
  private readonly claims = new Set<string>();

  constructor(
    private readonly client: Client,
    private readonly opts: WarmTargetOptions,
  ) {}

  /** Polls `check` until it gives a value; throws after `timeoutMs` or when the checkpoint does. */
  async wait<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = this.opts.answerTimeoutMs ?? 120_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.opts.checkpoint?.();
      const v = await check();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, this.opts.pollMs ?? 500));
    }
  }

  /** A blank DataVolume of the disk's size, waited for until it is Succeeded. */
  async allocate(d: WarmDisk): Promise<void> {
    const ns = this.opts.targetNamespace;
    this.claims.add(d.claim);
    const dv = {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name: d.claim, namespace: ns, labels: this.opts.labels ?? {} },
      spec: {
        source: { blank: {} },
        storage: { resources: { requests: { storage: String(d.size) } }, ...(this.opts.storageClass ? { storageClassName: this.opts.storageClass } : {}) },
      },
    };
    try {
      await this.client.create(DATAVOLUMES, dv, { namespace: ns });
    } catch (e) {
      if (!isStatusError(e, 'AlreadyExists')) throw e;
    }
    await this.wait(`DataVolume ${d.claim}`, async () => {
      const phase = o((await this.client.get(DATAVOLUMES, d.claim, { namespace: ns })).status).phase;
      if (phase === 'Failed') throw new Error(`DataVolume ${d.claim} failed`);
      return phase === 'Succeeded' ? true : undefined;
    });
  }

  /** The claim's NBD export, asked of its agent once per run; its status names the PSK Secret. */
  async exportOf(d: WarmDisk): Promise<forklift.WarmExportStatus> {
    const known = this.exports.get(d.claim);
    if (known) return known;
    const ns = this.opts.targetNamespace;
    this.claims.add(d.claim);
    const req: forklift.WarmExportRequest = { id: this.opts.id };
    await this.client.patch(PVCS, d.claim, { metadata: { annotations: { [WARM_EXPORT]: JSON.stringify(req) } } }, { namespace: ns });
    const st = await this.wait(`the export of claim ${d.claim}`, async () => {
      const pvc = await this.client.get(PVCS, d.claim, { namespace: ns });
      const s = parseAnnotation<forklift.WarmExportStatus>(pvc.metadata?.annotations?.[WARM_EXPORT_STATUS]);
      return s?.id === this.opts.id && s.phase !== 'Stopped' ? s : undefined;
    });
    if (st.phase !== 'Ready') throw new Error(`claim ${d.claim} cannot be exported: ${st.message ?? st.phase}`);
    if (!st.secret || !st.address || !st.export) throw new Error(`the export of claim ${d.claim} names no address or PSK secret`);
    this.exports.set(d.claim, st);
    return st;
  }

  /** The export with its key: for a writer in this process (vSphere's rounds), not an agent. */
  async exportWithKey(d: WarmDisk): Promise<ExportWithKey> {
    const st = await this.exportOf(d);
    const s = await this.client.get(SECRETS, st.secret!, { namespace: this.opts.targetNamespace });
    const data = o((s as Obj).data) as Record<string, string | undefined>;
    if ((s as { type?: string }).type !== WARM_PSK_SECRET_TYPE || !data.identity || !data.key)
      throw new Error(`secret ${st.secret} is not a warm export's PSK (type ${WARM_PSK_SECRET_TYPE})`);
    const d64 = (v: string) => Buffer.from(v, 'base64').toString('utf8');
    return { address: st.address!, export: st.export!, identity: d64(data.identity), key: d64(data.key) };
  }

  /** Ends the exports this run asked for and their Secrets (the agent deletes them too; this covers an agent that is gone). */
  async release(claims: Iterable<string>): Promise<void> {
    const ns = this.opts.targetNamespace;
    for (const claim of new Set([...this.claims, ...claims])) {
      const req: forklift.WarmExportRequest = { id: this.opts.id, stop: true };
      await this.client.patch(PVCS, claim, { metadata: { annotations: { [WARM_EXPORT]: JSON.stringify(req) } } }, { namespace: ns }).catch(() => undefined);
      await this.client.delete(SECRETS, warmPskSecretName(this.opts.id, claim), { namespace: ns }).catch(() => undefined);
    }
    this.exports.clear();
  }

  /**
   * A cancel: deletes the DataVolumes, claims and PSK Secrets this run made: `claims` and (a
   * cancel before the disks were known) the DataVolumes carrying the run's labels. A DataVolume
   * of such a name without them (the user's) stays.
   */
  async discard(claims: Iterable<string>): Promise<void> {
    const ns = this.opts.targetNamespace;
    const labels = Object.entries(this.opts.labels ?? {});
    const names = new Set([...this.claims, ...claims]);
    if (labels.length)
      for (const dv of (await this.client.list(DATAVOLUMES, { namespace: ns, labelSelector: labels.map(([k, v]) => `${k}=${v}`).join(',') })).items)
        names.add(dv.metadata!.name!);
    const gone = (e: unknown) => {
      if (!isStatusError(e, 'NotFound')) throw e;
    };
    for (const name of names) {
      const dv = await this.client.get(DATAVOLUMES, name, { namespace: ns }).catch((e: unknown) => gone(e));
      if (!dv || labels.some(([k, v]) => dv.metadata?.labels?.[k] !== v)) continue;
      await this.client.delete(DATAVOLUMES, name, { namespace: ns }).catch(gone);
      await this.client.delete(PVCS, name, { namespace: ns }).catch(gone);
      await this.client.delete(SECRETS, warmPskSecretName(this.opts.id, name), { namespace: ns }).catch(gone);
    }
  }
}
