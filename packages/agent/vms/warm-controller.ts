/**
 * The agent's side of a warm migration (docs/forklift.md, "Warm migration"), asked through
 * reserved annotations as conversions are: a target claim whose volume is on this node gets an
 * NBD export (WARM_EXPORT → WARM_EXPORT_STATUS), a VMI running here gets copy rounds of its
 * disks (WARM_COPY → WARM_COPY_STATUS) with warm-copy.ts. Rounds of one VMI run one at a time;
 * exports end when asked, when their claim goes, and with the agent.
 *
 * An export's PSK goes to a Secret in the claim's namespace, owned by the claim and deleted when
 * the export ends, never to an annotation: a claim or VMI is readable by viewers, a Secret is not
 * (packages/apiserver/auth.ts). The source's agent reads it by the reference in its request and
 * takes only a Secret of type WARM_PSK_SECRET_TYPE.
 */
import { annotationsOf, forklift, refs, storage } from '@vessel/api';
import { isStatusError, type Client } from '@vessel/client';
import { Controller, type Informer, type Log } from '@vessel/runtime';
import { containedPath, type Pool } from '../storage/pools.ts';
import type { QmpClient } from '../qmp/client.ts';
import { copyRound, endTracking, exportTarget, WarmCopyError, type TargetExport, type WarmTarget } from './warm-copy.ts';

const { PVCS, SECRETS, VMIS } = refs;
const { WARM_EXPORT, WARM_EXPORT_STATUS, WARM_COPY, WARM_COPY_STATUS, WARM_PSK_LABEL, WARM_PSK_SECRET_TYPE, warmPskSecretName } = forklift;

export interface WarmControllerOptions {
  nodeName: string;
  pools: Map<string, Pool>;
  vms: { qmpFor(ns: string, name: string): QmpClient | undefined; runDirFor(ns: string, name: string): string | undefined };
  /** Where exports listen: the node's fabric address, else 127.0.0.1. */
  listenAddress: string;
  /** The node's network namespace (relays run there). */
  netns?: string;
  log?: Log;
}

const parse = <T>(v: string | undefined): T | undefined => {
  try {
    return v ? (JSON.parse(v) as T) : undefined;
  } catch {
    return undefined;
  }
};

export class WarmController extends Controller {
  private readonly pvcs: Informer;
  private readonly vmis: Informer;
  /** Exports by claim key, with the request id they answer. */
  private readonly exports = new Map<string, { id: string; exp: TargetExport; secret: string }>();
  /** Rounds answered or running, by VMI key: `id/seq`. */
  private readonly rounds = new Map<string, string>();
  private stopping = false;

  constructor(
    client: Client,
    private readonly opts: WarmControllerOptions,
  ) {
    super('warm', client, opts.log, 2);
    this.pvcs = this.inform(PVCS, (p) => (annotationsOf(p)[WARM_EXPORT] ? [`pvc:${p.metadata.namespace}/${p.metadata.name}`] : []));
    this.vmis = this.inform(VMIS, (v) => (annotationsOf(v)[WARM_COPY] ? [`vmi:${v.metadata.namespace}/${v.metadata.name}`] : []));
  }

  override async stop(): Promise<void> {
    this.stopping = true;
    await super.stop();
    // The Secrets stay: a restarted agent serves the exports again with new keys (and Secrets); the
    // controller's release or the claim's deletion ends them.
    for (const { exp } of this.exports.values()) await exp.stop();
    this.exports.clear();
  }

  protected async reconcile(key: string): Promise<void> {
    if (key.startsWith('pvc:')) return this.reconcileExport(key.slice(4));
    if (key.startsWith('vmi:')) return this.reconcileCopy(key.slice(4));
  }

  private async reconcileExport(key: string): Promise<void> {
    const pvc = this.pvcs.get(key);
    const ann = pvc ? annotationsOf(pvc) : {};
    const req = parse<forklift.WarmExportRequest>(ann[WARM_EXPORT]);
    const cur = this.exports.get(key);
    const gone = !pvc || !!pvc.metadata.deletionTimestamp || !req || req.stop || (cur && cur.id !== req.id);
    if (cur && gone) {
      this.exports.delete(key);
      await cur.exp.stop();
      await this.deleteSecret(pvc?.metadata.namespace ?? key.split('/')[0], cur.secret);
      this.log(`warm: export of claim ${key} stopped`);
      if (pvc && req?.stop) await this.answerExport(key, { id: req.id, phase: 'Stopped' });
    }
    if (!pvc || !req || req.stop || pvc.metadata.deletionTimestamp || this.exports.has(key) || this.stopping) return;
    if (ann[storage.SELECTED_NODE] !== this.opts.nodeName || !ann[storage.VOLUME_PATH]) return;
    const prev = parse<forklift.WarmExportStatus>(ann[WARM_EXPORT_STATUS]);
    // A Ready answer left by an earlier agent process names an export that is gone: served again.
    if (prev?.id === req.id && prev.phase === 'Failed') return;
    try {
      const path = containedPath(this.opts.pools.values(), pvc.metadata.namespace!, ann[storage.VOLUME_PATH], `${storage.VOLUME_PATH} of claim ${key}`).path;
      const exp = await exportTarget({ path, format: 'qcow2', host: this.opts.listenAddress, netns: this.opts.netns });
      const secret = warmPskSecretName(req.id, pvc.metadata.name);
      // No Secret, no export: nobody could use it.
      await this.writeSecret(pvc, secret, exp).catch(async (e: unknown) => {
        await exp.stop();
        throw e;
      });
      this.exports.set(key, { id: req.id, exp, secret });
      this.log(`warm: claim ${key} exported on ${exp.address}`);
      await this.answerExport(key, { id: req.id, phase: 'Ready', address: exp.address, export: exp.export, secret });
    } catch (e) {
      await this.answerExport(key, { id: req.id, phase: 'Failed', message: e instanceof Error ? e.message : String(e) });
    }
  }

  private async reconcileCopy(key: string): Promise<void> {
    const vmi = this.vmis.get(key);
    if (!vmi) return;
    const [ns, name] = key.split('/');
    const req = parse<forklift.WarmCopyRequest>(annotationsOf(vmi)[WARM_COPY]);
    const qmp = this.opts.vms.qmpFor(ns, name);
    const runDir = this.opts.vms.runDirFor(ns, name);
    if (!req || !qmp || !runDir) return; // not running here
    const tag = `${req.id}/${req.seq}`;
    if (this.rounds.get(key) === tag) return;
    const prev = parse<forklift.WarmCopyStatus>(annotationsOf(vmi)[WARM_COPY_STATUS]);
    if (prev?.id === req.id && prev.seq === req.seq && prev.phase !== 'Running') return;
    this.rounds.set(key, tag);
    const answer = (s: Omit<forklift.WarmCopyStatus, 'id' | 'seq'>) => this.answerCopy(ns, name, { id: req.id, seq: req.seq, ...s });
    if (req.end) {
      for (const v of vmi.spec && Array.isArray((vmi.spec as { volumes?: unknown }).volumes) ? (vmi.spec as { volumes: { name: string }[] }).volumes : [])
        await endTracking(qmp, v.name);
      return answer({ phase: 'Succeeded' });
    }
    if (!req.volume || !req.target?.secret || (req.mode !== 'full' && req.mode !== 'incremental'))
      return answer({ phase: 'Failed', message: 'the request names no volume, mode or target' });
    await answer({ phase: 'Running', done: 0, total: 0 });
    let last = 0;
    try {
      const r = await copyRound(qmp, {
        volume: req.volume,
        mode: req.mode,
        target: await this.readTarget(req.target),
        runDir,
        netns: this.opts.netns,
        stop: () => this.stopping,
        onProgress: (p) => {
          // Progress at most every 2 s: every write is an update of the VMI.
          if (Date.now() - last < 2000) return;
          last = Date.now();
          void answer({ phase: 'Running', ...p }).catch(() => undefined);
        },
      });
      this.log(`warm: ${key}: ${req.mode} round of ${req.volume}: ${r.total} bytes`);
      await answer({ phase: 'Succeeded', done: r.done, total: r.total });
    } catch (e) {
      const code = e instanceof WarmCopyError ? e.code : 'WarmCopyFailed';
      await answer({ phase: 'Failed', code, message: e instanceof Error ? e.message : String(e) });
    }
  }

  /** The export's PSK Secret, owned by the claim (it goes with it); one left by an earlier export is replaced. */
  private async writeSecret(pvc: { metadata: { name?: string; namespace?: string; uid?: string } }, name: string, exp: TargetExport): Promise<void> {
    const ns = pvc.metadata.namespace!;
    const b64 = (v: string) => Buffer.from(v).toString('base64');
    const body = {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: {
        name,
        namespace: ns,
        labels: { [WARM_PSK_LABEL]: pvc.metadata.name! },
        ownerReferences: [{ apiVersion: 'v1', kind: 'PersistentVolumeClaim', name: pvc.metadata.name!, uid: pvc.metadata.uid!, blockOwnerDeletion: false }],
      },
      type: WARM_PSK_SECRET_TYPE,
      data: { identity: b64(exp.identity), key: b64(exp.key) },
    };
    try {
      await this.client.create(SECRETS, body, { namespace: ns });
    } catch (e) {
      if (!isStatusError(e, 'AlreadyExists')) throw e;
      // Replaced, not patched: whatever else is in the name (another type, other keys) goes.
      await this.client.delete(SECRETS, name, { namespace: ns });
      await this.client.create(SECRETS, body, { namespace: ns });
    }
  }

  private async deleteSecret(ns: string, name: string): Promise<void> {
    await this.client.delete(SECRETS, name, { namespace: ns }).catch((e: unknown) => {
      if (!isStatusError(e, 'NotFound')) this.log(`warm: deleting secret ${ns}/${name}: ${e instanceof Error ? e.message : String(e)}`);
    });
  }

  /** The source's side: the target named by a request, its PSK read from the Secret the request names. */
  private async readTarget(t: NonNullable<forklift.WarmCopyRequest['target']>): Promise<WarmTarget> {
    const where = `${t.secret?.namespace}/${t.secret?.name}`;
    const s = await this.client.get(SECRETS, t.secret.name, { namespace: t.secret.namespace }).catch((e: unknown) => {
      throw new WarmCopyError('WarmCopyFailed', `the PSK secret ${where}: ${e instanceof Error ? e.message : String(e)}`);
    });
    const data = (s as { type?: string; data?: Record<string, string> }).data ?? {};
    if ((s as { type?: string }).type !== WARM_PSK_SECRET_TYPE || !data.identity || !data.key)
      throw new WarmCopyError('WarmCopyFailed', `secret ${where} is not a warm export's PSK (type ${WARM_PSK_SECRET_TYPE})`);
    const d = (v: string) => Buffer.from(v, 'base64').toString('utf8');
    return { address: t.address, export: t.export, identity: d(data.identity), key: d(data.key) };
  }

  private async answerExport(key: string, s: forklift.WarmExportStatus): Promise<void> {
    const [ns, name] = key.split('/');
    await this.client.patch(PVCS, name, { metadata: { annotations: { [WARM_EXPORT_STATUS]: JSON.stringify(s) } } }, { namespace: ns });
  }

  private async answerCopy(ns: string, name: string, s: forklift.WarmCopyStatus): Promise<void> {
    await this.client.patch(VMIS, name, { metadata: { annotations: { [WARM_COPY_STATUS]: JSON.stringify(s) } } }, { namespace: ns });
  }
}
