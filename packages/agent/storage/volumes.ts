/**
 * The agent's volume manager: for every claim bound to this node it makes the volume in the
 * claim's pool, filling it from the claim's DataVolume (http, registry, upload, clone, blank)
 * or leaving it blank, and only then shows the claim Bound, with its capacity and the
 * vessel.io/volume-path annotation: a claim never shows a half-made disk. It reports the
 * DataVolume's progress and outcome with CDI's phases and Events. Deleting a claim waits
 * while a VM uses it (the pvc-protection finalizer), then removes the volume.
 *
 * An import that dies with the agent starts again when the agent comes back (the volume
 * file does not exist until an import publishes it); an upload resumes from its file.
 *
 * Expansion: a Bound claim whose request grows past status.capacity is grown in place, as
 * Kubernetes' resizer and KubeVirt's disk expansion do: through QMP `block_resize` when a VMI
 * running on this node uses it (the guest sees the bigger disk at once), else with `qemu-img
 * resize`; then status.capacity follows, with the Resizing condition meanwhile and
 * VolumeResizeSuccessful / VolumeResizeFailed Events. Both only grow metadata and are checked
 * against the size the disk already has, so a resize cut short by a crash simply completes on
 * the next reconcile.
 */
import { X509Certificate } from 'node:crypto';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { claimVolumes, findByResource, parseQuantity, phaseOf, storage, tryParseQuantity, type PopulationSource, refs, annotationsOf } from '@vessel/api';
import type { Client } from '@vessel/client';
import {
  BY_CLAIM,
  BY_NAMESPACE,
  byClaim,
  byNamespace,
  Controller,
  EventRecorder,
  setCondition,
  updateStatus,
  type KubeObject,
  type Informer,
  type Log,
} from '@vessel/runtime';
import { deviceId } from '../qemu/argv.ts';
import type { QmpClient } from '../qmp/client.ts';
import { cloneVolume } from './clone.ts';
import { ImportError } from './errors.ts';
import { formatProgress, importDisk, parseExtraHeaders, type ImportSource } from './import.ts';
import { ANY_NAMESPACE, containedPath, PathError, type Pool } from './pools.ts';
import { scrubPaths } from '../scrub.ts';
import * as qemuImg from './qemu-img.ts';
import type { EgressPolicy } from './egress.ts';
import { openRegistryDisk, registryInsecure } from './registry.ts';
import { parseOvaSource, resolveOvaMember, underRoots } from './ova-source.ts';
import { discardUpload, partPath, receiveUpload, UploadError, uploadOffset } from './upload.ts';

type Obj = Record<string, unknown>;
const { PVCS, DATAVOLUMES, STORAGE_CLASSES, VMIS, SECRETS, CONFIGMAPS } = refs;
const NAMESPACES = findByResource('', 'v1', 'namespaces')!;
/** Queue keys of namespaces (names have no '/'): a deleted one's empty pool directories go. */
const NAMESPACE_KEY = 'namespace:';
/** Index of claims by their StorageClass's name. */
const CLASS = 'storageClass';
const keyOf = (o: KubeObject) => `${o.metadata.namespace}/${o.metadata.name}`;

/** Failures that will fail again however often they are retried: the DataVolume goes Failed. */
const PERMANENT = new Set([
  'PathOutsideNamespace',
  'PathNotInPool',
  'BackingFileRefused',
  'DataFileRefused',
  'EncryptedRefused',
  'TooLarge',
  'Corrupt',
  'ChecksumMismatch',
  'UnsupportedFormat',
  'InvalidArgument',
]);

export interface VolumeManagerOptions {
  nodeName: string;
  pools: Map<string, Pool>;
  log?: Log;
  /** The VMs running on this node (the agent's VmRuntime), for online resizes; without it every resize is offline. */
  live?: LiveVms;
  /** Where http and registry sources may be fetched from (egress.ts); default: the built-in refusals only. */
  egress?: EgressPolicy;
  /** Directories of OVA packages an upload DataVolume marked storage.OVA_SOURCE is read from in place (./ova-source.ts); none: it waits for its upload. */
  ovaRoots?: readonly string[];
}

/** The QMP commands the volume manager sends. */
export type QmpLike = Pick<QmpClient, 'execute'>;

/** What the volume manager needs of the VM runtime (VmRuntime satisfies it). */
export interface LiveVms {
  /**
   * Runs `work` while no start, stop or other held work of the VMI runs; `qmp` is its QEMU's
   * connection when it runs on this node.
   */
  withVm<T>(namespace: string, name: string, work: (qmp: QmpLike | undefined) => Promise<T>): Promise<T>;
}

interface Population {
  abort: AbortController;
  done: Promise<void>;
}

export class VolumeManager extends Controller {
  private readonly pvcs: Informer;
  private readonly dvs: Informer;
  private readonly classes: Informer;
  private readonly vmis: Informer;
  private readonly namespaces: Informer;
  private readonly events: EventRecorder;
  /** Running populations by claim key. */
  private readonly running = new Map<string, Population>();
  /** Transient failures so far, per claim uid, for backoff and restartCount. */
  private readonly restarts = new Map<string, number>();
  /** When a claim's next attempt may start (ms since the epoch), per claim uid, after a failure. */
  private readonly retryAt = new Map<string, number>();
  private readonly inUseReported = new Set<string>();
  /** Expansions refused (class without allowVolumeExpansion) and already reported, by "uid/request". */
  private readonly refusalsReported = new Set<string>();

  constructor(
    client: Client,
    private readonly opts: VolumeManagerOptions,
  ) {
    super('volumes', client, opts.log);
    this.events = new EventRecorder(client, 'vessel-agent', opts.nodeName);
    this.pvcs = this.inform(PVCS)
      .addIndex(BY_NAMESPACE, byNamespace)
      .addIndex(CLASS, (p) => [String((p.spec as Obj | undefined)?.storageClassName ?? '')]);
    this.namespaces = this.inform(NAMESPACES, (n) => [NAMESPACE_KEY + n.metadata.name]);
    this.dvs = this.inform(DATAVOLUMES, (dv) => [keyOf(dv)]);
    // A class that now allows expansion lets its claims' pending expansions go on.
    this.classes = this.inform(STORAGE_CLASSES, (sc) => this.pvcs.byIndex(CLASS, sc.metadata.name).filter(expansionRequested).map(keyOf));
    // A VM letting go of a claim may unblock its deletion; a VM starting or stopping changes how a
    // pending expansion is done.
    this.vmis = this.inform(VMIS, (vmi) => [
      ...this.pvcs
        .list()
        .filter((p) => p.metadata.deletionTimestamp)
        .map(keyOf),
      ...byClaim(vmi).filter((k) => {
        const p = this.pvcs.get(k);
        return p !== undefined && expansionRequested(p);
      }),
    ]).addIndex(BY_CLAIM, byClaim);
  }

  /** Removes importers' leftovers of an earlier run of this agent, once the caches know the claims. */
  protected override async started(): Promise<void> {
    // First: a namespace directory they were the last files of goes below.
    await this.removeKeptCopies();
    const byUid = new Map(this.pvcs.list().map((p) => [p.metadata.uid ?? '', p]));
    for (const pool of this.opts.pools.values()) {
      const removed = await pool.removeStaleTemps((uid) => {
        const p = byUid.get(uid);
        return !pool.shared || !p || annotationsOf(p)[storage.SELECTED_NODE] === this.opts.nodeName;
      });
      if (removed.length) this.log(`volumes: removed ${removed.length} temporary file(s) of interrupted imports in pool ${pool.name}`);
      await pool.collect();
      for (const ns of await pool.namespaceDirs()) if (!this.namespaces.get(ns)) await pool.removeNamespaceDirIfEmpty(ns);
    }
  }

  /**
   * The copies this node kept as a migration target after failed post-copies (migration.ts
   * keepPostcopyCopies) go with their claim: on its deletion (this node may not hold the claim's
   * volume, so every agent looks), and at start for claims deleted while the agent was down.
   */
  private async removeKeptCopies(namespaces?: readonly string[]): Promise<void> {
    const uids = new Set(this.pvcs.list().map((p) => p.metadata.uid ?? ''));
    for (const pool of this.opts.pools.values()) {
      if (pool.shared) continue;
      const removed = await pool.removeOrphanedPostcopyCopies(uids, namespaces).catch((e: Error) => {
        this.log(`volumes: removing kept post-copy copies in pool ${pool.name}: ${e.message}`);
        return [];
      });
      for (const f of removed) this.log(`volumes: removed ${f}, a copy kept after a failed post-copy migration: its claim was deleted`);
    }
  }

  /** A deleted namespace's directories in the pools go once empty (its claims' deletions empty them). */
  private async namespaceGone(ns: string): Promise<void> {
    if (this.namespaces.get(ns)) return;
    if (this.pvcs.byIndex(BY_NAMESPACE, ns).length) {
      this.queue.addAfter(NAMESPACE_KEY + ns, 2000);
      return;
    }
    for (const pool of this.opts.pools.values()) await pool.removeNamespaceDirIfEmpty(ns);
  }

  protected override async stopped(): Promise<void> {
    for (const p of this.running.values()) p.abort.abort();
    await Promise.all([...this.running.values()].map((p) => p.done));
  }

  protected async reconcile(key: string): Promise<void> {
    if (key.startsWith(NAMESPACE_KEY)) return this.namespaceGone(key.slice(NAMESPACE_KEY.length));
    const pvc = this.pvcs.get(key);
    if (!pvc) {
      await this.abortPopulation(key);
      return this.removeKeptCopies([key.split('/')[0]]);
    }
    // Before the node check: a claim in the shared pool is grown by the node its VM runs on.
    if (expansionRequested(pvc)) return this.expand(pvc);
    if (annotationsOf(pvc)[storage.SELECTED_NODE] !== this.opts.nodeName) return;
    const pool = this.poolOf(pvc);
    if (!pool) return;
    if (pvc.metadata.deletionTimestamp) return this.release(pvc, pool);
    if ((pvc.status as Obj | undefined)?.phase === 'Bound') return;
    const finalizers = (pvc.metadata.finalizers as string[] | undefined) ?? [];
    if (!finalizers.includes(storage.PVC_PROTECTION)) {
      // First the finalizer, so a volume is never made for a claim that can vanish without us.
      await this.client.patch(
        PVCS,
        pvc.metadata.name,
        { metadata: { resourceVersion: pvc.metadata.resourceVersion, finalizers: [...finalizers, storage.PVC_PROTECTION] } },
        { namespace: pvc.metadata.namespace },
      );
      return;
    }
    const dest = pool.volumePath(pvc.metadata.namespace!, pvc.metadata.name, pvc.metadata.uid!);
    await pool.ensureNamespaceDir(pvc.metadata.namespace!);
    if (this.running.has(key)) return;
    if (await exists(dest)) return this.bind(pvc, pool, dest); // published before a restart, not yet recorded
    const dvName = annotationsOf(pvc)[storage.POPULATED_FOR];
    const dv = dvName ? this.dvs.get(`${pvc.metadata.namespace}/${dvName}`) : undefined;
    if (dvName && !dv) return; // the DataVolume's informer event brings us back
    if (dv && String((dv.status as Obj | undefined)?.phase) === 'Failed') return;
    // Backing off after a failure: any event meanwhile (our own status write among them) waits too.
    const wait = (this.retryAt.get(pvc.metadata.uid ?? '') ?? 0) - Date.now();
    if (wait > 0) {
      if (Number.isFinite(wait)) this.queue.addAfter(key, wait);
      return;
    }
    this.startPopulation(pvc, dv, pool, dest);
  }

  private poolOf(pvc: KubeObject): Pool | undefined {
    const recorded = annotationsOf(pvc)[storage.VOLUME_POOL];
    const className = (pvc.spec as Obj | undefined)?.storageClassName as string | undefined;
    const sc = className ? this.classes.get(className) : undefined;
    const name = recorded ?? (sc?.parameters as Record<string, string> | undefined)?.pool ?? className;
    return name ? this.opts.pools.get(name) : undefined;
  }

  private startPopulation(pvc: KubeObject, dv: KubeObject | undefined, pool: Pool, dest: string): void {
    const key = keyOf(pvc);
    const abort = new AbortController();
    const done = this.populate(pvc, dv, pool, dest, abort.signal)
      .catch((e) => this.failed(pvc, dv, e, abort.signal))
      .finally(() => {
        if (this.running.get(key)?.abort === abort) this.running.delete(key);
      });
    this.running.set(key, { abort, done });
  }

  private async abortPopulation(key: string): Promise<void> {
    const p = this.running.get(key);
    if (!p) return;
    p.abort.abort();
    await p.done;
  }

  private async populate(pvc: KubeObject, dv: KubeObject | undefined, pool: Pool, dest: string, signal: AbortSignal): Promise<void> {
    const size = requestedBytes(pvc);
    const restoreFrom = annotationsOf(pvc)[storage.RESTORE_SOURCE];
    if (restoreFrom) {
      // Only a snapshot file of the claim's own namespace, or any for an image in the golden
      // namespace (admins only), checked with `..` and symlinks resolved before it is opened.
      const ns = pvc.metadata.namespace!;
      const source = this.containedPath(ns === storage.GOLDEN_IMAGES_NAMESPACE ? ANY_NAMESPACE : ns, restoreFrom, storage.RESTORE_SOURCE);
      if (!/@[^/]*$/.test(source)) throw new ImportError('InvalidArgument', `${storage.RESTORE_SOURCE} must name a snapshot file of namespace ${ns}`);
      // A restore into a new VM: a linked clone of the snapshot file (which never changes), or a full copy.
      await cloneVolume({ source, dest, size: Math.max(size, 0), linked: annotationsOf(pvc)[storage.CLONE_TYPE] !== 'full', immutableSource: true, signal });
      await this.bind(pvc, pool, dest);
      return;
    }
    if (!dv) {
      await importDisk({ source: { kind: 'blank', size }, dest, maxVirtualSize: size, signal });
      await this.bind(pvc, pool, dest);
      return;
    }
    const ns = dv.metadata.namespace!;
    const spec = (dv.spec ?? {}) as Obj;
    const cloneFrom = annotationsOf(pvc)[storage.CLONE_SOURCE];
    const source: PopulationSource | undefined = cloneFrom
      ? { kind: 'pvc', namespace: cloneFrom.split('/')[0], name: cloneFrom.split('/')[1] }
      : storage.populationSource(spec, ns, annotationsOf(dv));
    if (!source) throw new ImportError('InvalidArgument', 'the DataVolume has no source Vessel can fill a volume from');
    const { running } = storage.phasesFor(source.kind);
    const progress = this.progressReporter(dv);
    const ova = source.kind === 'upload' ? await this.ovaInPlace(dv) : undefined;
    if (ova) {
      await this.setDvPhase(dv, 'ImportInProgress', 'ImportInProgress', `Import into ${pvc.metadata.name} from the OVA package in place`);
      const r = await importDisk({ source: ova, dest, maxVirtualSize: size, onProgress: progress, signal });
      await this.bind(pvc, pool, dest, dv, r.destVirtualSize);
      return;
    }
    if (source.kind === 'upload') {
      await this.setDvPhase(
        dv,
        running,
        'UploadReady',
        'Upload into the volume is ready: run `vessel image-upload dv ' + dv.metadata.name + ' --image-path FILE`',
        (await uploadOffset(dest)) > 0,
      );
      return; // the bytes arrive through receive(); see there
    }
    await this.setDvPhase(
      dv,
      running,
      running,
      `${source.kind === 'pvc' ? 'Cloning from ' + source.namespace + '/' + source.name : 'Import into ' + pvc.metadata.name + ' in progress'}`,
    );
    if (source.kind === 'pvc') {
      const src = this.pvcs.get(`${source.namespace}/${source.name}`);
      const recorded = src && annotationsOf(src)[storage.VOLUME_PATH];
      if (!src || !recorded) throw new ImportError('IOError', `clone source ${source.namespace}/${source.name} has no volume yet`);
      // The source's file must be in the source claim's own namespace (admission decided this tenant may read that claim).
      const srcPath = this.containedPath(source.namespace, recorded, `${storage.VOLUME_PATH} of the clone source`);
      const samePool = annotationsOf(src)[storage.VOLUME_POOL] === pool.name;
      const linked = annotationsOf(pvc)[storage.CLONE_TYPE] === 'linked' && samePool;
      await cloneVolume({ source: srcPath, dest, size: Math.max(size, 0), linked, signal, onProgress: progress });
    } else if (source.kind === 'blank') {
      await importDisk({ source: { kind: 'blank', size }, dest, maxVirtualSize: size, signal });
    } else {
      const r = await importDisk({
        source: await this.importSource(source, ns, signal),
        dest,
        maxVirtualSize: size,
        checksum: source.kind === 'http' ? source.checksum : undefined,
        onProgress: progress,
        signal,
        egress: this.opts.egress,
      });
      return this.bind(pvc, pool, dest, dv, r.destVirtualSize);
    }
    await this.bind(pvc, pool, dest, dv);
  }

  /**
   * An upload DataVolume Forklift marked with its OVA disk: the range to read in place when the
   * package is under this agent's OVA roots; undefined (the upload is awaited) otherwise.
   */
  private async ovaInPlace(dv: KubeObject): Promise<ImportSource | undefined> {
    const ref = parseOvaSource(annotationsOf(dv)[storage.OVA_SOURCE]);
    if (!ref || !this.opts.ovaRoots?.length) return undefined;
    const real = await underRoots(ref.package, this.opts.ovaRoots);
    if (!real) return undefined;
    const m = await resolveOvaMember(real, ref.member);
    return { kind: 'range', path: m.path, offset: m.offset, size: m.size, ...(m.digest ? { digest: m.digest } : {}) };
  }

  /** The importer's source for http/registry/blank, with CA bundles and credentials read from the namespace. */
  private async importSource(source: Extract<PopulationSource, { kind: 'http' | 'registry' }>, ns: string, signal: AbortSignal): Promise<ImportSource> {
    {
      const caPem = source.certConfigMap ? await this.caBundle(ns, source.certConfigMap) : undefined;
      const creds = source.secretRef ? await this.credentials(ns, source.secretRef) : undefined;
      if (source.kind === 'http') {
        const headers: Record<string, string> = {};
        for (const name of source.secretExtraHeaders ?? []) Object.assign(headers, await this.extraHeaders(ns, name));
        if (creds) headers.Authorization = `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
        return { kind: 'http', url: source.url, caPem, headers: Object.keys(headers).length ? headers : undefined };
      }
      const reg = await openRegistryDisk({
        url: source.url,
        insecure: registryInsecure(source.url, this.opts.egress),
        caPem,
        credentials: creds,
        signal,
        egress: this.opts.egress,
      });
      return { kind: 'stream', stream: reg.stream, sizeHint: reg.size };
    }
  }

  private async caBundle(ns: string, name: string): Promise<string> {
    const cm = await this.client.get(CONFIGMAPS, name, { namespace: ns });
    const pems = Object.values((cm.data as Record<string, string> | undefined) ?? {}).filter((v) => v.includes('BEGIN CERTIFICATE'));
    if (!pems.length) throw new ImportError('InvalidArgument', `ConfigMap ${ns}/${name} (certConfigMap) holds no PEM certificate`);
    for (const p of pems) new X509Certificate(p); // a clear error now beats a TLS failure later
    return pems.join('\n');
  }

  /** CDI's secretExtraHeaders: every value of the Secret is one `Name: value` header (KubeVirt's export token secret is one). */
  private async extraHeaders(ns: string, name: string): Promise<Record<string, string>> {
    const secret = await this.client.get(SECRETS, name, { namespace: ns });
    return parseExtraHeaders(
      Object.values((secret.data as Record<string, string> | undefined) ?? {}).map((v) => Buffer.from(v, 'base64').toString('utf8')),
      `Secret ${ns}/${name} (secretExtraHeaders)`,
    );
  }

  /** CDI's secretRef: keys accessKeyId and secretKey. */
  private async credentials(ns: string, name: string): Promise<{ username: string; password: string }> {
    const secret = await this.client.get(SECRETS, name, { namespace: ns });
    const data = (secret.data as Record<string, string> | undefined) ?? {};
    const dec = (k: string) => (data[k] ? Buffer.from(data[k], 'base64').toString('utf8') : '');
    if (!data.accessKeyId) throw new ImportError('InvalidArgument', `Secret ${ns}/${name} (secretRef) has no accessKeyId`);
    return { username: dec('accessKeyId'), password: dec('secretKey') };
  }

  /**
   * Publishes a made volume: grows it to the claim's size, records where it lives, marks the claim
   * Bound and the DataVolume Succeeded. `virtualSize`: the file's, when the importer just read it
   * (one qemu-img run less at the end of every import: 0.1-0.7 s at load 20, issue 14).
   */
  private async bind(pvc: KubeObject, pool: Pool, dest: string, dv?: KubeObject, virtualSize?: number): Promise<void> {
    const size = requestedBytes(pvc);
    const info = { virtualSize: virtualSize ?? (await qemuImg.info(dest, { format: 'qcow2' })).virtualSize };
    if (info.virtualSize < size) await qemuImg.resize(dest, size, { format: 'qcow2' });
    const ns = pvc.metadata.namespace!;
    await discardUpload(dest);
    await this.client.patch(
      PVCS,
      pvc.metadata.name,
      {
        metadata: { annotations: { [storage.VOLUME_PATH]: dest, [storage.VOLUME_POOL]: pool.name } },
        spec: { volumeName: `pvc-${pvc.metadata.uid}` },
      },
      { namespace: ns },
    );
    const spec = (pvc.spec ?? {}) as Obj;
    let newlyBound = false;
    await updateStatus(this.client, PVCS, ns, pvc.metadata.name, (s) => {
      newlyBound = s.phase !== 'Bound';
      s.phase = 'Bound';
      s.accessModes = spec.accessModes ?? ['ReadWriteOnce'];
      s.capacity = { storage: ((spec.resources as Obj | undefined)?.requests as Obj | undefined)?.storage ?? String(Math.max(size, info.virtualSize)) };
    });
    this.restarts.delete(pvc.metadata.uid ?? '');
    this.retryAt.delete(pvc.metadata.uid ?? '');
    const dvName = annotationsOf(pvc)[storage.POPULATED_FOR];
    const owner = dv ?? (dvName ? this.dvs.get(`${ns}/${dvName}`) : undefined);
    if (owner) {
      const kind = annotationsOf(pvc)[storage.CLONE_SOURCE]
        ? 'Clone'
        : (owner.spec as Obj | undefined)?.source && ((owner.spec as Obj).source as Obj).upload
          ? 'Upload'
          : 'Import';
      let changed = false;
      await updateStatus(this.client, DATAVOLUMES, ns, owner.metadata.name, (s) => {
        if (s.phase === 'Succeeded') return false;
        changed = true;
        s.phase = 'Succeeded';
        s.progress = '100.0%';
        s.claimName = pvc.metadata.name;
        setCondition(s, { type: 'Bound', status: 'True', reason: 'Bound', message: `PVC ${pvc.metadata.name} Bound` });
        setCondition(s, { type: 'Ready', status: 'True', reason: '', message: '' });
        setCondition(s, { type: 'Running', status: 'False', reason: 'Completed', message: '' });
      });
      if (changed)
        await this.events.record(
          owner,
          'Normal',
          `${kind}Succeeded`,
          `Successfully ${kind === 'Clone' ? 'cloned' : kind === 'Upload' ? 'uploaded' : 'imported'} into PVC ${pvc.metadata.name}`,
        );
    } else if (newlyBound) {
      await this.events.record(pvc, 'Normal', 'ProvisioningSucceeded', `Successfully provisioned volume pvc-${pvc.metadata.uid} in pool ${pool.name}`);
    }
  }

  private async failed(pvc: KubeObject, dv: KubeObject | undefined, e: unknown, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return;
    const code = e instanceof ImportError || e instanceof PathError ? e.code : 'Error';
    const raw = e instanceof Error ? e.message : String(e);
    this.log(`volumes: ${keyOf(pvc)}: ${code}: ${raw}`);
    // The log keeps the paths; what the tenant reads does not.
    const message = this.scrub(raw, pvc.metadata.namespace);
    const uid = pvc.metadata.uid ?? '';
    const permanent = PERMANENT.has(code);
    const restarts = (this.restarts.get(uid) ?? 0) + (permanent ? 0 : 1);
    this.restarts.set(uid, restarts);
    // The next attempt waits 1 s, doubling to 60 s. Recorded before the status write below,
    // whose informer event brings the claim straight back to reconcile().
    const delay = Math.min(60_000, 1000 * 2 ** Math.min(restarts - 1, 6));
    // A permanent failure is not tried again for this claim (a DataVolume shows Failed).
    this.retryAt.set(uid, permanent ? Number.POSITIVE_INFINITY : Date.now() + delay);
    if (dv) {
      await updateStatus(this.client, DATAVOLUMES, dv.metadata.namespace, dv.metadata.name, (s) => {
        if (permanent) s.phase = 'Failed';
        s.restartCount = restarts;
        setCondition(s, { type: 'Ready', status: 'False', reason: code, message });
        setCondition(s, { type: 'Running', status: 'False', reason: code, message });
      }).catch((err: unknown) => {
        // The caller rethrows the import's error; this one is only logged, not lost.
        this.log(`volumes: ${keyOf(pvc)}: could not record ${code} in the DataVolume's status: ${err instanceof Error ? err.message : err}`);
      });
    }
    await this.events.record(dv ?? pvc, 'Warning', permanent ? `${code}` : 'ImportRetry', permanent ? message : `${message} (attempt ${restarts}; retrying)`);
    if (!permanent) this.queue.addAfter(keyOf(pvc), delay);
  }

  /** The file an export reads (a claim's volume or a snapshot file, as its object recorded it), checked to be in the namespace's pool directory. */
  exportPath(namespace: string, recorded: string): string {
    return this.containedPath(namespace === storage.GOLDEN_IMAGES_NAMESPACE ? ANY_NAMESPACE : namespace, recorded, 'the exported volume');
  }

  /** `path` from an object, inside `namespace`'s directory of one of this node's pools (see Pool.containedPath). */
  private containedPath(namespace: string, path: string, what: string): string {
    return containedPath(this.opts.pools.values(), namespace, path, what).path;
  }

  /** A message for a tenant's status or Event: no host paths (see scrub.ts). */
  private scrub(message: string, namespace: string | undefined): string {
    return scrubPaths(message, { pools: [...this.opts.pools.values()].map((p) => p.dir) }, namespace);
  }

  private async setDvPhase(dv: KubeObject, phase: string, reason: string, message: string, keepProgress = false): Promise<void> {
    let changed = false;
    await updateStatus(this.client, DATAVOLUMES, dv.metadata.namespace, dv.metadata.name, (s) => {
      changed = s.phase !== phase;
      s.phase = phase;
      if (!keepProgress) s.progress = 'N/A';
      if (this.restarts.get(dv.metadata.uid ?? '') === undefined) s.restartCount ??= 0;
      setCondition(s, { type: 'Bound', status: 'True', reason: 'Bound', message: `PVC ${dv.metadata.name} Bound` });
      setCondition(s, { type: 'Running', status: 'True', reason: '', message: '' });
      setCondition(s, { type: 'Ready', status: 'False', reason, message });
    });
    if (changed) await this.events.record(dv, 'Normal', reason, message);
  }

  /** Writes status.progress at most once a second (and always the final 100%). */
  private progressReporter(dv: KubeObject): (percent: number) => void {
    let last = 0;
    let shown = -1;
    let writing = false;
    return (percent) => {
      const now = Date.now();
      const p = Math.floor(percent * 100) / 100;
      if (writing || p === shown || (now - last < 1000 && p < 100)) return;
      last = now;
      shown = p;
      writing = true;
      void updateStatus(this.client, DATAVOLUMES, dv.metadata.namespace, dv.metadata.name, (s) => {
        if (s.phase === 'Succeeded' || s.phase === 'Failed') return false;
        s.progress = formatProgress(p);
      })
        .catch(() => undefined)
        .finally(() => {
          writing = false;
        }); // progress only: the next tick or the final status says it again
    };
  }

  /** Deletion: wait while a VM uses the claim, then remove the volume and the finalizer. */
  private async release(pvc: KubeObject, pool: Pool): Promise<void> {
    const key = keyOf(pvc);
    await this.abortPopulation(key);
    const user = this.userOf(pvc);
    if (user) {
      if (!this.inUseReported.has(key)) {
        this.inUseReported.add(key);
        await this.events.record(pvc, 'Normal', 'VolumeInUse', `the volume is in use by VirtualMachineInstance ${user}; it will be deleted when the VM stops`);
      }
      return;
    }
    this.inUseReported.delete(key);
    const derived = pool.volumePath(pvc.metadata.namespace!, pvc.metadata.name, pvc.metadata.uid!);
    const recorded = annotationsOf(pvc)[storage.VOLUME_PATH];
    let path = derived;
    if (recorded && recorded !== derived) {
      // Never delete a file outside the claim's namespace, whatever the annotation says.
      try {
        path = this.containedPath(pvc.metadata.namespace!, recorded, storage.VOLUME_PATH);
      } catch (e) {
        if (!(e instanceof PathError)) throw e;
        this.log(`volumes: ${key}: ${e.message}; deleting ${derived} instead`);
      }
    }
    await discardUpload(path);
    const outcome = await pool.deleteVolume(path);
    this.restarts.delete(pvc.metadata.uid ?? '');
    this.retryAt.delete(pvc.metadata.uid ?? '');
    if (outcome === 'kept-for-clones') this.log(`volumes: ${key}: volume kept until its linked clones are deleted`);
    const finalizers = ((pvc.metadata.finalizers as string[] | undefined) ?? []).filter((f) => f !== storage.PVC_PROTECTION);
    await this.client.patch(
      PVCS,
      pvc.metadata.name,
      { metadata: { resourceVersion: pvc.metadata.resourceVersion, finalizers: finalizers.length ? finalizers : null } },
      { namespace: pvc.metadata.namespace },
    );
  }

  /** A VirtualMachineInstance that has not finished and mounts the claim (directly or through its DataVolume). */
  private userOf(pvc: KubeObject): string | undefined {
    return this.vmis.byIndex(BY_CLAIM, keyOf(pvc)).find((vmi) => !['Succeeded', 'Failed'].includes(phaseOf(vmi)))?.metadata.name;
  }

  // ---- expansion ----

  /** Grows the claim's volume to its request (see planExpansion), online when its VM runs here. */
  private async expand(pvc: KubeObject): Promise<void> {
    const key = keyOf(pvc);
    const ns = pvc.metadata.namespace!;
    const className = (pvc.spec as Obj | undefined)?.storageClassName as string | undefined;
    const plan = planExpansion(pvc, {
      nodeName: this.opts.nodeName,
      storageClass: className ? this.classes.get(className) : undefined,
      vmis: this.vmis.list(),
    });
    if (plan.action === 'none') return;
    if (plan.action === 'refuse') {
      const seen = `${pvc.metadata.uid}/${requestedBytes(pvc)}`;
      if (!this.refusalsReported.has(seen)) {
        this.refusalsReported.add(seen);
        await this.events.record(pvc, 'Warning', 'VolumeResizeFailed', `resize volume pvc-${pvc.metadata.uid} refused: ${plan.message}`);
      }
      return;
    }
    const { request, size, user } = plan;
    let path: string;
    try {
      path = this.containedPath(ns, annotationsOf(pvc)[storage.VOLUME_PATH]!, storage.VOLUME_PATH);
    } catch (e) {
      await this.events.record(pvc, 'Warning', 'VolumeResizeFailed', this.scrub(`resize volume pvc-${pvc.metadata.uid} refused: ${(e as Error).message}`, ns));
      return;
    }
    const volumeName = `pvc-${pvc.metadata.uid}`;
    let started = false;
    await updateStatus(this.client, PVCS, ns, pvc.metadata.name, (s) => {
      const capacity = (s.capacity as Obj | undefined)?.storage as string | undefined;
      if (s.phase !== 'Bound' || (capacity !== undefined && parseQuantity(capacity) >= requestedBytes(pvc))) return false;
      started = !(s.conditions as Obj[] | undefined)?.some((c) => c.type === 'Resizing');
      s.allocatedResources = { ...(s.allocatedResources as Obj | undefined), storage: request };
      s.allocatedResourceStatuses = { ...(s.allocatedResourceStatuses as Obj | undefined), storage: 'ControllerResizeInProgress' };
      setPvcCondition(s, 'Resizing', user?.running ? `growing the disk of the running VirtualMachineInstance ${user.vmi}` : '');
    });
    if (started) await this.events.record(pvc, 'Normal', 'Resizing', `Vessel is resizing volume ${volumeName} to ${request}`);
    let how: string;
    try {
      if (user && this.opts.live) {
        how = await this.opts.live.withVm(ns, user.vmi, async (qmp) => {
          // Running by the cache but not (yet) attached here, e.g. while the agent re-adopts its
          // QEMUs: qemu-img could not take the image from it anyway.
          if (!qmp && user.running) return 'wait';
          const online = qmp ? await growOnline(qmp, user.volume, size) : 'absent';
          if (online === 'grown') return `online, in the running VirtualMachineInstance ${user.vmi}`;
          if (online === 'already') return 'the disk already had that size';
          return (await growOffline(path, size)) ? 'offline' : 'the disk already had that size';
        });
      } else if (user?.running) {
        how = 'wait';
      } else {
        how = (await growOffline(path, size)) ? 'offline' : 'the disk already had that size';
      }
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      this.log(`volumes: ${key}: resize to ${request} failed: ${message}`);
      await this.events.record(pvc, 'Warning', 'VolumeResizeFailed', this.scrub(`resize volume ${volumeName} to ${request} failed: ${message}`, ns));
      throw e; // retried with backoff
    }
    if (how === 'wait') {
      this.queue.addAfter(key, 1000);
      return;
    }
    let finished = false;
    await updateStatus(this.client, PVCS, ns, pvc.metadata.name, (s) => {
      const capacity = (s.capacity as Obj | undefined)?.storage as string | undefined;
      if (capacity !== undefined && parseQuantity(capacity) >= requestedBytes(pvc)) return false;
      finished = true;
      s.capacity = { ...(s.capacity as Obj | undefined), storage: request };
      s.allocatedResources = { ...(s.allocatedResources as Obj | undefined), storage: request };
      const statuses = { ...(s.allocatedResourceStatuses as Obj | undefined) };
      delete statuses.storage;
      if (Object.keys(statuses).length) s.allocatedResourceStatuses = statuses;
      else delete s.allocatedResourceStatuses;
      const conditions = ((s.conditions as Obj[] | undefined) ?? []).filter((c) => c.type !== 'Resizing' && c.type !== 'FileSystemResizePending');
      if (conditions.length) s.conditions = conditions;
      else delete s.conditions;
    });
    if (finished) {
      this.log(`volumes: ${key}: grown to ${request} (${how})`);
      await this.events.record(pvc, 'Normal', 'VolumeResizeSuccessful', `Resize volume succeeded: ${volumeName} is ${request} (${how})`);
    }
  }

  // ---- uploads (called by the agent's HTTP server) ----

  /** Bytes received so far for the claim's upload; throws UploadError when it takes no upload. */
  async uploadStatus(ns: string, name: string): Promise<{ offset: number }> {
    const { dest } = this.uploadTarget(ns, name);
    return { offset: await uploadOffset(dest) };
  }

  /**
   * Receives (part of) an upload; when complete, imports it into the volume and binds the
   * claim. `wait` false answers as soon as the bytes are safe (upload-async).
   */
  async receive(
    ns: string,
    name: string,
    body: Readable,
    opts: { offset: number; length?: number; wait: boolean; signal?: AbortSignal },
  ): Promise<{ received: number; complete: boolean; done?: Promise<void> }> {
    const { pvc, dv, pool, dest } = this.uploadTarget(ns, name);
    const progress = this.progressReporter(dv);
    let r: { received: number; complete: boolean };
    try {
      r = await receiveUpload(dest, body, {
        offset: opts.offset,
        length: opts.length,
        signal: opts.signal,
        claimBytes: requestedBytes(pvc),
        onBytes: opts.length ? (n) => progress((n / opts.length!) * 100 * 0.5) : undefined,
      });
    } catch (e) {
      // An upload larger than the claim fails the DataVolume, like an import of a too large image.
      if (e instanceof ImportError) await this.failed(pvc, dv, e, new AbortController().signal); // a signal never aborted: always recorded
      throw e;
    }
    if (!r.complete) return r;
    // Registered as the claim's running population, so a reconcile meanwhile leaves it alone.
    const key = keyOf(pvc);
    const abort = new AbortController();
    const finish = (async () => {
      try {
        await importDisk({
          source: { kind: 'file', path: partPath(dest) },
          dest,
          maxVirtualSize: requestedBytes(pvc),
          onProgress: (p) => progress(50 + p / 2),
          signal: abort.signal,
        });
        await this.bind(pvc, pool, dest, dv);
      } catch (e) {
        await discardUpload(dest);
        await this.failed(pvc, dv, e, abort.signal);
        throw e;
      } finally {
        if (this.running.get(key)?.abort === abort) this.running.delete(key);
      }
    })();
    // Its failure is recorded by failed() above; `done` only tells waiters that it is over.
    this.running.set(key, { abort, done: finish.catch(() => undefined) });
    if (!opts.wait) finish.catch(() => undefined); // nobody awaits it: the outcome is in the status
    return { ...r, done: finish };
  }

  private uploadTarget(ns: string, name: string): { pvc: KubeObject; dv: KubeObject; pool: Pool; dest: string } {
    const pvc = this.pvcs.get(`${ns}/${name}`);
    if (!pvc || annotationsOf(pvc)[storage.SELECTED_NODE] !== this.opts.nodeName)
      throw new UploadError(404, `PersistentVolumeClaim ${ns}/${name} is not on node ${this.opts.nodeName}`);
    const dvName = annotationsOf(pvc)[storage.POPULATED_FOR];
    const dv = dvName ? this.dvs.get(`${ns}/${dvName}`) : undefined;
    if (!dv || !((dv.spec as Obj | undefined)?.source as Obj | undefined)?.upload)
      throw new UploadError(400, `PersistentVolumeClaim ${ns}/${name} is not filled by an upload DataVolume`);
    const phase = (dv.status as Obj | undefined)?.phase;
    if (phase === 'Succeeded') throw new UploadError(409, `DataVolume ${ns}/${dv.metadata.name} already holds its upload`);
    if (phase === 'Failed') {
      const why = ((dv.status as Obj | undefined)?.conditions as { type?: string; message?: string }[] | undefined)?.find((c) => c.type === 'Ready')?.message;
      throw new UploadError(400, `DataVolume ${ns}/${dv.metadata.name} has failed${why ? ` (${why})` : ''}: delete it and create it again`);
    }
    if (phase !== 'UploadReady')
      throw new UploadError(503, `DataVolume ${ns}/${dv.metadata.name} is ${phase ?? 'Pending'}, not UploadReady yet: try again shortly`);
    const pool = this.poolOf(pvc);
    if (!pool) throw new UploadError(500, `no pool for PersistentVolumeClaim ${ns}/${name} on node ${this.opts.nodeName}`);
    return { pvc, dv, pool, dest: pool.volumePath(ns, name, pvc.metadata.uid!) };
  }
}

/** A Bound claim (not being deleted) whose request is more than its recorded capacity. */
export function expansionRequested(pvc: KubeObject): boolean {
  const status = (pvc.status ?? {}) as Obj;
  if (status.phase !== 'Bound' || pvc.metadata.deletionTimestamp || !annotationsOf(pvc)[storage.VOLUME_PATH]) return false;
  const capacity = tryParseQuantity((status.capacity as Obj | undefined)?.storage) ?? 0;
  return (tryParseQuantity((((pvc.spec as Obj | undefined)?.resources as Obj | undefined)?.requests as Obj | undefined)?.storage) ?? 0) > capacity;
}

/** A VMI using a claim: which VMI, through which of its volumes (= disk name), where, and whether its QEMU runs. */
export interface ExpansionUser {
  vmi: string;
  volume: string;
  node?: string;
  running: boolean;
}

export type ExpansionPlan =
  /** Nothing for this node to do (no growth asked, or another node's job). */
  | { action: 'none'; why: string }
  /** The class does not allow expansion (what the API server's admission would have said). */
  | { action: 'refuse'; message: string }
  /** Grow to `size` bytes (the request rounded up to whole 512-byte sectors); online in `user` when it runs. */
  | { action: 'expand'; request: string; size: number; user?: ExpansionUser };

/**
 * What this node does about a claim whose request may exceed its capacity. The node that grows
 * it is the one where a VMI using it is (that agent holds the VMI's QEMU), else the claim's
 * selected node; a class without allowVolumeExpansion refuses it, as Kubernetes' admission does.
 */
export function planExpansion(pvc: KubeObject, ctx: { nodeName: string; storageClass: KubeObject | undefined; vmis: readonly KubeObject[] }): ExpansionPlan {
  if (!expansionRequested(pvc)) return { action: 'none', why: 'no expansion requested' };
  const ns = pvc.metadata.namespace;
  const users: ExpansionUser[] = [];
  for (const vmi of ctx.vmis) {
    if (vmi.metadata.namespace !== ns) continue;
    const status = (vmi.status ?? {}) as Obj;
    if (status.phase === 'Succeeded' || status.phase === 'Failed') continue;
    const use = claimVolumes(vmi).find((c) => c.claim === pvc.metadata.name);
    if (use) users.push({ vmi: vmi.metadata.name, volume: use.volume, node: status.nodeName as string | undefined, running: status.phase === 'Running' });
  }
  // A running user first: its QEMU must see the new size.
  const user = users.find((u) => u.running) ?? users[0];
  const node = user?.node ?? annotationsOf(pvc)[storage.SELECTED_NODE];
  if (node !== ctx.nodeName) return { action: 'none', why: `node ${node ?? '(none yet)'} grows it` };
  const sc = ctx.storageClass;
  const className = (pvc.spec as Obj | undefined)?.storageClassName;
  if (!sc || !className || sc.metadata.name !== className || sc.allowVolumeExpansion !== true) {
    return {
      action: 'refuse',
      message: `StorageClass ${className ? String(className) : '(none)'}: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize`,
    };
  }
  const storageReq = (((pvc.spec as Obj).resources as Obj).requests as Obj).storage;
  return { action: 'expand', request: String(storageReq), size: alignedSize(requestedBytes(pvc)), user };
}

/** Bytes rounded up to whole 512-byte sectors (QEMU and qcow2 refuse other sizes). */
export function alignedSize(bytes: number): number {
  return Math.ceil(bytes / 512) * 512;
}

/** One entry of QMP query-block, reduced to what is read here. */
export interface BlockInfo {
  device?: string;
  qdev?: string;
  inserted?: { 'node-name'?: string; image?: { 'virtual-size'?: number } };
}

/**
 * The top block node of a disk and its current size, from `query-block`: the entry whose qdev
 * is the disk's device id (or a QOM path under it, as virtio-blk-pci reports its backend). The
 * top node changes when a snapshot adds an overlay, so it is looked up each time.
 */
export function topBlockNode(blocks: readonly BlockInfo[], diskName: string): { nodeName: string; size: number } | undefined {
  const id = deviceId(diskName);
  const b = blocks.find((x) => x.qdev === id || x.qdev === `/machine/peripheral/${id}` || x.qdev?.startsWith(`/machine/peripheral/${id}/`));
  const nodeName = b?.inserted?.['node-name'];
  if (!nodeName) return undefined;
  return { nodeName, size: Number(b.inserted?.image?.['virtual-size'] ?? 0) };
}

/**
 * block_resize of the disk's top node in a running QEMU: 'grown', 'already' when it was that
 * big, 'absent' when QEMU has no such disk (a volume no disk uses: QEMU does not open it).
 */
async function growOnline(qmp: QmpLike, diskName: string, size: number): Promise<'grown' | 'already' | 'absent'> {
  const top = topBlockNode(await qmp.execute<BlockInfo[]>('query-block'), diskName);
  if (!top) return 'absent';
  if (top.size >= size) return 'already';
  await qmp.execute('block_resize', { 'node-name': top.nodeName, size });
  return 'grown';
}

/** qemu-img resize of a volume no QEMU has open; false when it was already that big. */
async function growOffline(path: string, size: number): Promise<boolean> {
  const info = await qemuImg.info(path, { format: 'qcow2', forceShare: true });
  if (info.virtualSize >= size) return false;
  await qemuImg.resize(path, size, { format: 'qcow2' });
  return true;
}

/** Sets a PersistentVolumeClaimCondition (core/v1: lastProbeTime and lastTransitionTime, no heartbeat). */
function setPvcCondition(s: Obj, type: string, message: string): void {
  const list = ((s.conditions as Obj[] | undefined) ?? []).slice();
  const i = list.findIndex((c) => c.type === type);
  const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const prev = i >= 0 ? list[i] : undefined;
  const next: Obj = { type, status: 'True', lastTransitionTime: prev?.status === 'True' ? prev.lastTransitionTime : now, ...(message ? { message } : {}) };
  if (i >= 0) list[i] = next;
  else list.push(next);
  s.conditions = list;
}

export function requestedBytes(pvc: KubeObject): number {
  const q = (((pvc.spec as Obj | undefined)?.resources as Obj | undefined)?.requests as Obj | undefined)?.storage;
  return q === undefined ? 0 : parseQuantity(q as string);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
