/**
 * The DataVolume controller (CDI's): makes the claim a DataVolume fills, owned by it and
 * marked `cdi.kubevirt.io/storage.populatedFor`, resolves `sourceRef` through its DataSource
 * to the claim to clone (linked: a qcow2 overlay on the golden image when both share a
 * pool), and reports the phases before the work starts (Pending, then ImportScheduled /
 * CloneScheduled / UploadScheduled once a node is chosen). From there the node agent that
 * holds the volume reports progress, Succeeded or Failed.
 */
import { storage, tryParseQuantity, refs, phaseOf, annotationsOf } from '@vessel/api';
import type { Client } from '@vessel/client';
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
  type KubeObject,
  setCondition,
  updateStatus,
} from '@vessel/runtime';

const { DATASOURCES, DATAVOLUMES, PVCS } = refs;

type Obj = Record<string, unknown>;
/** Phases the agent owns: this controller never writes over them. */
const AGENT_PHASES = new Set(['ImportInProgress', 'CloneInProgress', 'UploadReady', 'Succeeded', 'Failed']);

/** Where a DataVolume clones from, after following sourceRef; or why it cannot yet. */
type CloneSource = { namespace: string; name: string; linked: boolean } | { pending: string; reason: string };

const BY_CLONE_CLAIM = 'cloneClaim';
const BY_SOURCE_REF = 'sourceRef';

/** A DataVolume cloning a claim (`source.pvc`) under "namespace/claim". */
const cloneClaimOf: IndexFunc = (dv) => {
  const src = storage.populationSource((dv.spec ?? {}) as Obj, dv.metadata.namespace ?? 'default');
  return src?.kind === 'pvc' ? [`${src.namespace}/${src.name}`] : [];
};

/** A DataVolume under the DataSource its `sourceRef` names, as "namespace/name". */
const sourceRefOf: IndexFunc = (dv) => {
  const ref = (dv.spec as { sourceRef?: { name?: string; namespace?: string } } | undefined)?.sourceRef;
  return ref?.name ? [`${ref.namespace ?? dv.metadata.namespace}/${ref.name}`] : [];
};

export class DataVolumeController extends Controller {
  private readonly dvs: Informer;
  private readonly pvcs: Informer;
  private readonly sources: Informer;
  private readonly events: EventRecorder;

  constructor(client: Client, log?: Log) {
    super('datavolume', client, log);
    this.events = new EventRecorder(client, 'vessel-datavolume-controller');
    this.dvs = this.inform(DATAVOLUMES).addIndex(BY_CLONE_CLAIM, cloneClaimOf).addIndex(BY_SOURCE_REF, sourceRefOf);
    this.sources = this.inform(DATASOURCES, (ds) => this.waiting(this.dvs.byIndex(BY_SOURCE_REF, cacheKey(ds)))).addIndex(
      BY_DATASOURCE_CLAIM,
      byDataSourceClaim,
    );
    // A claim changing wakes its DataVolume, and every DataVolume cloning from it: directly, or
    // through a DataSource that names it.
    this.pvcs = this.inform(PVCS, (p) => {
      const key = cacheKey(p);
      const viaSources = this.sources.byIndex(BY_DATASOURCE_CLAIM, key).flatMap((ds) => this.dvs.byIndex(BY_SOURCE_REF, cacheKey(ds)));
      const keys = this.waiting([...this.dvs.byIndex(BY_CLONE_CLAIM, key), ...viaSources]);
      const owner = annotationsOf(p)[storage.POPULATED_FOR];
      return owner ? [...keys, `${p.metadata.namespace}/${owner}`] : keys;
    });
  }

  /** The keys of those DataVolumes the controller still works on (the agent has the others). */
  private waiting(dvs: KubeObject[]): string[] {
    return dvs.filter((dv) => !AGENT_PHASES.has(phaseOf(dv))).map(cacheKey);
  }

  protected async reconcile(key: string): Promise<void> {
    const dv = this.dvs.get(key);
    if (!dv || dv.metadata.deletionTimestamp || AGENT_PHASES.has(phaseOf(dv))) return;
    const { namespace = 'default', name } = splitKey(key);
    const spec = (dv.spec ?? {}) as Obj;
    const clone = this.cloneSource(dv);
    if (clone && 'pending' in clone) return this.setPhase(dv, 'Pending', clone.reason, clone.pending);

    let pvc = this.pvcs.get(key);
    if (pvc && annotationsOf(pvc)[storage.POPULATED_FOR] !== name) {
      return this.setPhase(
        dv,
        'Pending',
        'ErrClaimNotValid',
        `a PersistentVolumeClaim named ${name} already exists and is not this DataVolume's; delete it or rename the DataVolume`,
      );
    }
    if (!pvc) pvc = await this.createClaim(dv, namespace, spec, clone);

    const kind = spec.sourceRef ? 'pvc' : (storage.populationSource(spec, namespace)?.kind ?? 'blank');
    if (annotationsOf(pvc)[storage.SELECTED_NODE]) {
      const { scheduled } = storage.phasesFor(kind);
      return this.setPhase(
        dv,
        scheduled,
        scheduled,
        `${scheduled === 'CloneScheduled' ? 'cloning' : scheduled === 'UploadScheduled' ? 'upload' : 'import'} will run on node ${annotationsOf(pvc)[storage.SELECTED_NODE]}`,
      );
    }
    return this.setPhase(dv, 'Pending', 'Pending', `PVC ${name} Pending`);
  }

  /** Follows sourceRef (a DataSource) or source.pvc to the claim to copy. */
  private cloneSource(dv: KubeObject): CloneSource | undefined {
    const ns = dv.metadata.namespace ?? 'default';
    const spec = (dv.spec ?? {}) as Obj;
    let target: { namespace: string; name: string; linked: boolean };
    const ref = spec.sourceRef as { kind?: string; name?: string; namespace?: string } | undefined;
    if (ref) {
      const dsKey = `${ref.namespace ?? ns}/${ref.name}`;
      const ds = this.sources.get(dsKey);
      if (!ds) return { pending: `DataSource ${dsKey} does not exist`, reason: 'DataSourceNotFound' };
      const src = ((ds.spec as Obj | undefined)?.source as { pvc?: { name?: string; namespace?: string } } | undefined)?.pvc;
      if (!src?.name) return { pending: `DataSource ${dsKey} has no spec.source.pvc`, reason: 'DataSourceNotReady' };
      target = { namespace: src.namespace ?? ds.metadata.namespace ?? ns, name: src.name, linked: true };
    } else {
      const src = storage.populationSource(spec, ns);
      if (src?.kind !== 'pvc') return undefined;
      target = { namespace: src.namespace, name: src.name, linked: false };
    }
    const pvc = this.pvcs.get(`${target.namespace}/${target.name}`);
    if (!pvc) return { pending: `clone source PersistentVolumeClaim ${target.namespace}/${target.name} does not exist`, reason: 'CloneSourceDoesNotExist' };
    if ((pvc.status as Obj | undefined)?.phase !== 'Bound' || !annotationsOf(pvc)[storage.VOLUME_PATH]) {
      return { pending: `clone source ${target.namespace}/${target.name} is not populated yet`, reason: 'CloneSourceNotReady' };
    }
    return target;
  }

  private async createClaim(dv: KubeObject, namespace: string, spec: Obj, clone: CloneSource | undefined): Promise<KubeObject> {
    const target = (spec.storage ?? spec.pvc ?? {}) as Obj;
    const source = clone && !('pending' in clone) ? this.pvcs.get(`${clone.namespace}/${clone.name}`) : undefined;
    const sourceSpec = (source?.spec ?? {}) as Obj;
    const asSize = (q: unknown) => (typeof q === 'string' || typeof q === 'number' ? String(q) : undefined);
    const sourceSize = asSize(((source?.status as Obj | undefined)?.capacity as Obj | undefined)?.storage);
    const requested = asSize(((target.resources as Obj | undefined)?.requests as Obj | undefined)?.storage) ?? sourceSize;
    // A clone may not be smaller than its source: the guest's filesystem would be cut.
    const smaller = requested !== undefined && sourceSize !== undefined && (tryParseQuantity(requested) ?? 0) < (tryParseQuantity(sourceSize) ?? 0);
    const finalSize = smaller ? sourceSize : requested;
    const a: Record<string, string> = { [storage.POPULATED_FOR]: dv.metadata.name };
    if (clone && !('pending' in clone)) {
      a[storage.CLONE_SOURCE] = `${clone.namespace}/${clone.name}`;
      a[storage.CLONE_TYPE] = clone.linked ? 'linked' : 'full';
    }
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
        accessModes: (target.accessModes as string[] | undefined) ?? (sourceSpec.accessModes as string[] | undefined) ?? ['ReadWriteOnce'],
        volumeMode: (target.volumeMode as string | undefined) ?? 'Filesystem',
        resources: { requests: { storage: finalSize } },
        // A clone without a class stays in its source's class: same pool, so it can be linked.
        ...((target.storageClassName ?? sourceSpec.storageClassName) ? { storageClassName: target.storageClassName ?? sourceSpec.storageClassName } : {}),
      },
    };
    const made = await this.client.create(PVCS, claim, { namespace });
    await updateStatus(this.client, DATAVOLUMES, namespace, dv.metadata.name, (s) => {
      s.claimName = dv.metadata.name;
    });
    return made as KubeObject;
  }

  private async setPhase(dv: KubeObject, phase: string, reason: string, message: string): Promise<void> {
    let changed = false;
    await updateStatus(this.client, DATAVOLUMES, dv.metadata.namespace, dv.metadata.name, (s) => {
      if (AGENT_PHASES.has(String(s.phase ?? ''))) return false;
      changed = s.phase !== phase;
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
    });
    if (changed) await this.events.record(dv, phase === 'Pending' && reason !== 'Pending' ? 'Warning' : 'Normal', reason, message);
  }
}
