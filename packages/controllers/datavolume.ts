/**
 * The DataVolume controller (CDI's): makes the claim a DataVolume fills, owned by it and
 * marked `cdi.kubevirt.io/storage.populatedFor`, resolves `sourceRef` through its DataSource
 * to the claim to clone (linked: a qcow2 overlay on the golden image when both share a
 * pool), and reports the phases before the work starts (Pending, then ImportScheduled /
 * CloneScheduled / UploadScheduled once a node is chosen). From there the node agent that
 * holds the volume reports progress, Succeeded or Failed.
 * Each reconcile computes the DataVolume's status in memory and writes it at most once, with
 * the cached copy's resourceVersion (a conflict means the agent or a newer reconcile wrote;
 * its event runs this again), as the VirtualMachine controller does.
 */
import type { V1beta1DataSource, V1beta1DataVolume, V1beta1DataVolumeSpec } from '@kubevirt-ui-ext/kubevirt-api/containerized-data-importer';
import type { IoK8sApiCoreV1PersistentVolumeClaim } from '@kubevirt-ui-ext/kubevirt-api/kubernetes';
import { storage, tryParseQuantity, refs, phaseOf, annotationsOf } from '@vessel/api';
import { isStatusError, type Client } from '@vessel/client';
import {
  BY_DATASOURCE_CLAIM,
  byDataSourceClaim,
  Controller,
  splitKey,
  type IndexFunc,
  type Log,
  EventRecorder,
  cacheKey,
  type Informer,
  setCondition,
  type Typed,
} from '@vessel/runtime';

const { DATASOURCES, DATAVOLUMES, PVCS } = refs;

type Obj = Record<string, unknown>;
type DataVolume = Typed<V1beta1DataVolume>;
type DataSource = Typed<V1beta1DataSource>;
type Claim = Typed<IoK8sApiCoreV1PersistentVolumeClaim>;
/** Phases the agent owns: this controller never writes over them. */
const AGENT_PHASES = new Set(['ImportInProgress', 'CloneInProgress', 'UploadReady', 'Succeeded', 'Failed']);

/** Where a DataVolume clones from, after following sourceRef; or why it cannot yet. */
type CloneSource = { namespace: string; name: string; linked: boolean } | { pending: string; reason: string };

const BY_CLONE_CLAIM = 'cloneClaim';
const BY_SOURCE_REF = 'sourceRef';

/** A DataVolume cloning a claim (`source.pvc`) under "namespace/claim". */
const cloneClaimOf: IndexFunc<DataVolume> = (dv) => {
  const src = storage.populationSource(specOf(dv), dv.metadata.namespace ?? 'default');
  return src?.kind === 'pvc' ? [`${src.namespace}/${src.name}`] : [];
};

/** A DataVolume under the DataSource its `sourceRef` names, as "namespace/name". */
const sourceRefOf: IndexFunc<DataVolume> = (dv) => {
  const ref = dv.spec?.sourceRef;
  return ref?.name ? [`${ref.namespace ?? dv.metadata.namespace}/${ref.name}`] : [];
};

/** The spec as @vessel/api's storage helpers read it (a plain object). */
const specOf = (dv: DataVolume): Obj => (dv.spec ?? {}) as Obj;

export class DataVolumeController extends Controller {
  private readonly dvs: Informer<DataVolume>;
  private readonly pvcs: Informer<Claim>;
  private readonly sources: Informer<DataSource>;
  private readonly events: EventRecorder;

  constructor(client: Client, log?: Log) {
    super('datavolume', client, log);
    this.events = new EventRecorder(client, 'vessel-datavolume-controller');
    this.dvs = this.inform<DataVolume>(DATAVOLUMES).addIndex(BY_CLONE_CLAIM, cloneClaimOf).addIndex(BY_SOURCE_REF, sourceRefOf);
    this.sources = this.inform<DataSource>(DATASOURCES, (ds) => this.waiting(this.dvs.byIndex(BY_SOURCE_REF, cacheKey(ds)))).addIndex(
      BY_DATASOURCE_CLAIM,
      byDataSourceClaim,
    );
    // A claim changing wakes its DataVolume, and every DataVolume cloning from it: directly, or
    // through a DataSource that names it.
    this.pvcs = this.inform<Claim>(PVCS, (p) => {
      const key = cacheKey(p);
      const viaSources = this.sources.byIndex(BY_DATASOURCE_CLAIM, key).flatMap((ds) => this.dvs.byIndex(BY_SOURCE_REF, cacheKey(ds)));
      const keys = this.waiting([...this.dvs.byIndex(BY_CLONE_CLAIM, key), ...viaSources]);
      const owner = annotationsOf(p)[storage.POPULATED_FOR];
      return owner ? [...keys, `${p.metadata.namespace}/${owner}`] : keys;
    });
  }

  /** The keys of those DataVolumes the controller still works on (the agent has the others). */
  private waiting(dvs: DataVolume[]): string[] {
    return dvs.filter((dv) => !AGENT_PHASES.has(phaseOf(dv))).map(cacheKey);
  }

  protected async reconcile(key: string): Promise<void> {
    const dv = this.dvs.get(key);
    if (!dv || dv.metadata.deletionTimestamp || AGENT_PHASES.has(phaseOf(dv))) return;
    const next = await this.sync(key, dv);
    await this.commit(dv, next);
  }

  /** Makes the claim when it is missing; the phase, reason and message the status should show. */
  private async sync(key: string, dv: DataVolume): Promise<{ phase: string; reason: string; message: string }> {
    const { namespace = 'default', name } = splitKey(key);
    const spec = specOf(dv);
    const clone = this.cloneSource(dv);
    if (clone && 'pending' in clone) return { phase: 'Pending', reason: clone.reason, message: clone.pending };

    let pvc = this.pvcs.get(key);
    if (pvc && annotationsOf(pvc)[storage.POPULATED_FOR] !== name) {
      return {
        phase: 'Pending',
        reason: 'ErrClaimNotValid',
        message: `a PersistentVolumeClaim named ${name} already exists and is not this DataVolume's; delete it or rename the DataVolume`,
      };
    }
    if (!pvc) pvc = await this.createClaim(dv, namespace, clone);

    const kind = spec.sourceRef ? 'pvc' : (storage.populationSource(spec, namespace)?.kind ?? 'blank');
    const node = annotationsOf(pvc)[storage.SELECTED_NODE];
    if (node) {
      const { scheduled } = storage.phasesFor(kind);
      const what = scheduled === 'CloneScheduled' ? 'cloning' : scheduled === 'UploadScheduled' ? 'upload' : 'import';
      return { phase: scheduled, reason: scheduled, message: `${what} will run on node ${node}` };
    }
    return { phase: 'Pending', reason: 'Pending', message: `PVC ${name} Pending` };
  }

  /** Follows sourceRef (a DataSource) or source.pvc to the claim to copy. */
  private cloneSource(dv: DataVolume): CloneSource | undefined {
    const ns = dv.metadata.namespace ?? 'default';
    let target: { namespace: string; name: string; linked: boolean };
    const ref = dv.spec?.sourceRef;
    if (ref) {
      const dsKey = `${ref.namespace ?? ns}/${ref.name}`;
      const ds = this.sources.get(dsKey);
      if (!ds) return { pending: `DataSource ${dsKey} does not exist`, reason: 'DataSourceNotFound' };
      const src = ds.spec?.source?.pvc;
      if (!src?.name) return { pending: `DataSource ${dsKey} has no spec.source.pvc`, reason: 'DataSourceNotReady' };
      target = { namespace: src.namespace ?? ds.metadata.namespace ?? ns, name: src.name, linked: true };
    } else {
      const src = storage.populationSource(specOf(dv), ns);
      if (src?.kind !== 'pvc') return undefined;
      target = { namespace: src.namespace, name: src.name, linked: false };
    }
    const pvc = this.pvcs.get(`${target.namespace}/${target.name}`);
    if (!pvc) return { pending: `clone source PersistentVolumeClaim ${target.namespace}/${target.name} does not exist`, reason: 'CloneSourceDoesNotExist' };
    if (pvc.status?.phase !== 'Bound' || !annotationsOf(pvc)[storage.VOLUME_PATH]) {
      return { pending: `clone source ${target.namespace}/${target.name} is not populated yet`, reason: 'CloneSourceNotReady' };
    }
    return target;
  }

  private async createClaim(dv: DataVolume, namespace: string, clone: CloneSource | undefined): Promise<Claim> {
    const spec: V1beta1DataVolumeSpec = dv.spec ?? {};
    const target = spec.storage ?? spec.pvc ?? {};
    const source = clone && !('pending' in clone) ? this.pvcs.get(`${clone.namespace}/${clone.name}`) : undefined;
    const asSize = (q: unknown) => (typeof q === 'string' || typeof q === 'number' ? String(q) : undefined);
    const sourceSize = asSize(source?.status?.capacity?.storage);
    const requested = asSize(target.resources?.requests?.storage) ?? sourceSize;
    // A clone may not be smaller than its source: the guest's filesystem would be cut.
    const smaller = requested !== undefined && sourceSize !== undefined && (tryParseQuantity(requested) ?? 0) < (tryParseQuantity(sourceSize) ?? 0);
    const finalSize = smaller ? sourceSize : requested;
    const a: Record<string, string> = { [storage.POPULATED_FOR]: dv.metadata.name };
    if (clone && !('pending' in clone)) {
      a[storage.CLONE_SOURCE] = `${clone.namespace}/${clone.name}`;
      a[storage.CLONE_TYPE] = clone.linked ? 'linked' : 'full';
    }
    const storageClassName = target.storageClassName ?? source?.spec?.storageClassName;
    const claim = {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: {
        name: dv.metadata.name,
        namespace,
        labels: { app: 'containerized-data-importer', 'app.kubernetes.io/managed-by': 'vessel' },
        annotations: a,
        ownerReferences: [
          {
            apiVersion: 'cdi.kubevirt.io/v1beta1',
            kind: 'DataVolume',
            name: dv.metadata.name,
            uid: dv.metadata.uid!,
            controller: true,
            blockOwnerDeletion: true,
          },
        ],
      },
      spec: {
        accessModes: target.accessModes ?? source?.spec?.accessModes ?? ['ReadWriteOnce'],
        volumeMode: target.volumeMode ?? 'Filesystem',
        resources: { requests: { storage: finalSize } },
        // A clone without a class stays in its source's class: same pool, so it can be linked.
        ...(storageClassName ? { storageClassName } : {}),
      },
    };
    return (await this.client.create(PVCS, claim, { namespace })) as Claim;
  }

  /** Writes the status `next` describes when it differs from the cached one; an Event when the phase changed. */
  private async commit(dv: DataVolume, next: { phase: string; reason: string; message: string }): Promise<void> {
    const { phase, reason, message } = next;
    const s = structuredClone((dv.status ?? {}) as Obj);
    const changed = s.phase !== phase;
    s.phase = phase;
    s.progress ??= 'N/A';
    s.claimName = dv.metadata.name;
    const bound = phase !== 'Pending';
    setCondition(s, {
      type: 'Bound',
      status: bound ? 'True' : 'False',
      reason: bound ? 'Bound' : reason,
      message: bound ? `PVC ${dv.metadata.name} Bound` : message,
    });
    setCondition(s, { type: 'Ready', status: 'False', reason, message });
    setCondition(s, { type: 'Running', status: 'False', reason, message });
    if (JSON.stringify(s) === JSON.stringify(dv.status ?? {})) return;
    try {
      await this.client.update(DATAVOLUMES, { ...dv, status: s }, { namespace: dv.metadata.namespace, subresource: 'status' });
    } catch (e) {
      // The agent took the DataVolume over, or it changed or went meanwhile: its event brings it back.
      if (isStatusError(e, 'Conflict') || isStatusError(e, 'NotFound')) return;
      throw e;
    }
    if (changed) await this.events.record(dv, phase === 'Pending' && reason !== 'Pending' ? 'Warning' : 'Normal', reason, message);
  }
}
