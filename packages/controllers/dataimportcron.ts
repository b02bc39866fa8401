/**
 * The DataImportCron controller (CDI's golden-image pipeline): on each tick of the cron's
 * schedule (and at once when it is new) it polls the source's digest (dataimportcron-poll.ts);
 * a new digest becomes a DataVolume `<managedDataSource>-<12 hex of the digest>` whose registry
 * URL is pinned to that digest, labelled `cdi.kubevirt.io/dataImportCron`; once that import
 * Succeeds the managed DataSource (created if absent) points at it, and imports beyond
 * `importsToKeep` (default 3) are deleted, oldest first (`garbageCollect: Never` keeps all).
 * State lives where CDI keeps it: the desired digest and the next and last poll times in the
 * cron's annotations, the imports in its status. Setting the `nextCronTime` annotation to now
 * makes the next reconcile poll (as CDI's tests do).
 */
import type { V1beta1DataImportCron, V1beta1DataSource, V1beta1DataVolume } from '@kubevirt-ui-ext/kubevirt-api/containerized-data-importer';
import { nextTick, parseCron, phaseOf, refs } from '@vessel/api';
import { isStatusError, type Client } from '@vessel/client';
import { cacheKey, Controller, EventRecorder, type IndexFunc, type Informer, type Log, setCondition, splitKey, type Typed } from '@vessel/runtime';
import { pinnedImageUrl, pollDigest, type DigestPoller, type PollOptions } from './dataimportcron-poll.ts';

const { DATAIMPORTCRONS, DATASOURCES, DATAVOLUMES, SECRETS } = refs;

type Cron = Typed<V1beta1DataImportCron>;
type DataVolume = Typed<V1beta1DataVolume>;
type DataSource = Typed<V1beta1DataSource>;
type Obj = Record<string, unknown>;
/** CDI's ImportStatus: its JSON names are capitalised upstream (`json:"DataVolumeName"`). */
interface ImportStatus {
  DataVolumeName: string;
  Digest: string;
}
type CronStatus = Omit<NonNullable<Cron['status']>, 'currentImports'> & { currentImports?: ImportStatus[] } & Obj;

/** CDI's label and annotations (cdi.kubevirt.io/...). */
export const CRON_LABEL = 'cdi.kubevirt.io/dataImportCron';
export const CLEANUP_LABEL = 'cdi.kubevirt.io/dataImportCron.cleanup';
export const ANN_DESIRED_DIGEST = 'cdi.kubevirt.io/storage.import.sourceDesiredDigest';
export const ANN_NEXT_CRON_TIME = 'cdi.kubevirt.io/storage.import.nextCronTime';
export const ANN_LAST_CRON_TIME = 'cdi.kubevirt.io/storage.import.lastCronTime';
export const ANN_LAST_USE_TIME = 'cdi.kubevirt.io/storage.import.lastUseTime';
const DEFAULT_IMPORTS_TO_KEEP = 3;
const BY_CRON = 'cron';

/** An object labelled by a cron, under "namespace/cron". */
const byCron: IndexFunc<DataVolume | DataSource> = (o) => {
  const c = o.metadata.labels?.[CRON_LABEL];
  return c ? [`${o.metadata.namespace}/${c}`] : [];
};

/** CDI's DataVolume name: the DataSource's name and the first 12 hex digits of the digest. */
export function importName(dataSource: string, digest: string): string {
  const hex = digest.replace(/^(sha256|uid):/, '');
  return `${dataSource.slice(0, 63 - 13)}-${hex.slice(0, 12)}`;
}

export interface DataImportCronOptions {
  /** Polls may reach loopback registries and servers (labs, tests; `--allow-loopback-imports`). */
  allowLoopback?: boolean;
  /** Loopback address and port pairs polls may reach without allowLoopback: `vessel up`'s local registry. */
  allowed?: PollOptions['allowed'];
  /** Replaces the network poll (unit tests). */
  poller?: DigestPoller;
  /** The clock (unit tests). */
  now?: () => Date;
}

export class DataImportCronController extends Controller {
  private readonly crons: Informer<Cron>;
  private readonly dvs: Informer<DataVolume>;
  private readonly sources: Informer<DataSource>;
  private readonly events: EventRecorder;
  private readonly poller: DigestPoller;
  private readonly now: () => Date;

  constructor(
    client: Client,
    log?: Log,
    private readonly opts: DataImportCronOptions = {},
  ) {
    super('dataimportcron', client, log, 1);
    this.poller = opts.poller ?? pollDigest;
    this.now = opts.now ?? (() => new Date());
    this.events = new EventRecorder(client, 'vessel-dataimportcron-controller');
    this.crons = this.inform<Cron>(DATAIMPORTCRONS);
    this.dvs = this.inform<DataVolume>(DATAVOLUMES, (dv) => byCron(dv)).addIndex(BY_CRON, byCron);
    this.sources = this.inform<DataSource>(DATASOURCES, (ds) => byCron(ds));
  }

  protected async reconcile(key: string): Promise<void> {
    if (!this.crons.get(key)) return this.cleanup(key);
    // The newest copy, not the cache's: this controller writes the cron twice per reconcile
    // (annotations, then status), and a stale copy would poll again and then conflict.
    const { namespace, name } = splitKey(key);
    let found: Cron;
    try {
      found = (await this.client.get(DATAIMPORTCRONS, name, { namespace })) as Cron;
    } catch (e) {
      if (isStatusError(e, 'NotFound')) return;
      throw e;
    }
    if (found.metadata.deletionTimestamp) return;
    const ns = found.metadata.namespace ?? 'default';
    const spec = found.spec;
    const dsKey = `${ns}/${spec.managedDataSource}`;
    const ds = this.sources.get(dsKey);
    const owner = ds?.metadata.labels?.[CRON_LABEL];
    if (owner && owner !== found.metadata.name) {
      const other = this.crons.get(`${ns}/${owner}`);
      if (other && other.spec.managedDataSource === spec.managedDataSource) {
        await this.events.record(
          found,
          'Warning',
          'ErrDataSourceAlreadyManaged',
          `DataSource ${spec.managedDataSource} is already managed by DataImportCron ${owner}`,
        );
        return;
      }
    }

    const cron = await this.pollIfDue(key, found);
    const status = structuredClone((cron.status ?? {}) as Obj) as CronStatus;
    const before = JSON.stringify(cron.status ?? {});
    const annotations = cron.metadata.annotations ?? {};
    const imports = status.currentImports ?? [];
    const current = imports[0] ? this.dvs.get(`${ns}/${imports[0].DataVolumeName}`) : undefined;
    let succeeded = false;
    const progressing = (s: 'True' | 'False', reason: string, message: string) => setCondition(status, { type: 'Progressing', status: s, reason, message });
    if (current && !current.metadata.deletionTimestamp) {
      const phase = phaseOf(current);
      if (phase === 'Succeeded') succeeded = true;
      else if (phase === 'ImportScheduled') progressing('False', 'ImportScheduled', 'Import is scheduled');
      else if (phase === 'ImportInProgress') progressing('True', 'ImportProgressing', 'Import is progressing');
      else progressing('False', phase || 'Pending', `Import DataVolume phase ${phase || 'Pending'}`);
      if (phase === 'Failed' && this.lastReason(cron) !== 'Failed') {
        await this.events.record(cron, 'Warning', 'ImportFailed', `import ${current.metadata.name} failed: ${this.dvMessage(current)}`);
      }
    } else {
      if (imports.length > 0) status.currentImports = imports.slice(1);
      progressing('False', 'NoImport', 'No current import');
    }

    if (succeeded) {
      const pvc = { namespace: ns, name: imports[0].DataVolumeName };
      if (status.lastImportedPVC?.name !== pvc.name || status.lastImportedPVC?.namespace !== ns) {
        status.lastImportedPVC = pvc;
        status.lastImportTimestamp = this.now().toISOString();
        await this.events.record(
          cron,
          'Normal',
          'ImportSucceeded',
          `imported ${imports[0].Digest} into ${pvc.name}; DataSource ${spec.managedDataSource} points at it`,
        );
      }
      progressing('False', 'NoImport', 'No current import');
    }
    await this.updateDataSource(cron, ds, status.lastImportedPVC);
    if (succeeded) await this.collectGarbage(cron, status.lastImportedPVC?.name);

    const desired = annotations[ANN_DESIRED_DIGEST];
    const list = status.currentImports ?? [];
    const upToDate = (s: 'True' | 'False', reason: string, message: string) => setCondition(status, { type: 'UpToDate', status: s, reason, message });
    if (desired && (list.length === 0 || desired !== list[0].Digest)) {
      upToDate('False', 'Outdated', 'Source digest updated since last import');
      // CDI's deleteErroneousDataVolume: an import that failed or keeps failing gives way to the new digest.
      const erroneous = !!current && isErroneous(current);
      if (erroneous) await this.deleteDataVolume(ns, current.metadata.name);
      if (succeeded || list.length === 0 || erroneous) {
        const name = await this.createImport(cron, desired);
        status.currentImports = [{ DataVolumeName: name, Digest: desired }];
        progressing('False', 'ImportScheduled', 'Import is scheduled');
      }
    } else if (succeeded) {
      upToDate('True', 'UpToDate', 'Latest import is up to date');
    } else if (list.length > 0) {
      upToDate('False', 'ImportProgressing', 'Import is progressing');
    } else {
      upToDate('False', 'NoDigest', 'No source digest');
    }
    if (annotations[ANN_LAST_CRON_TIME]) status.lastExecutionTimestamp = annotations[ANN_LAST_CRON_TIME];
    status.sourceFormat = 'pvc';
    if (JSON.stringify(status) !== before) {
      await this.client.update(DATAIMPORTCRONS, { ...cron, status }, { namespace: ns, subresource: 'status' });
    }
    const next = annotations[ANN_NEXT_CRON_TIME];
    // At most an hour ahead: timers are 32-bit, and a long wait is re-checked anyway.
    if (next) this.queue.addAfter(key, Math.min(3600_000, Math.max(0, Date.parse(next) - this.now().getTime()) + 50));
  }

  private lastReason(cron: Cron): string | undefined {
    return (cron.status?.conditions ?? []).find((c) => c.type === 'Progressing')?.reason;
  }

  private dvMessage(dv: DataVolume): string {
    const c = (dv.status?.conditions ?? []).find((x) => x.type === 'Running') ?? (dv.status?.conditions ?? []).find((x) => x.type === 'Ready');
    return c?.message || 'see its conditions';
  }

  /**
   * Polls when the next tick has come (or none is recorded: a new cron imports at once),
   * records the digest and the next tick in the annotations; returns the cron as written.
   */
  private async pollIfDue(key: string, cron: Cron): Promise<Cron> {
    const a = cron.metadata.annotations ?? {};
    const now = this.now();
    const nextAt = a[ANN_NEXT_CRON_TIME] ? Date.parse(a[ANN_NEXT_CRON_TIME]) : NaN;
    const hasImport = ((cron.status as CronStatus | undefined)?.currentImports ?? []).length > 0 || !!a[ANN_DESIRED_DIGEST];
    // No schedule: poll once, for the first import.
    if (!cron.spec.schedule && hasImport) return cron;
    if (!Number.isNaN(nextAt) && nextAt > now.getTime()) return cron;
    const annotations: Record<string, string> = { ...a, [ANN_LAST_CRON_TIME]: now.toISOString() };
    try {
      const digest = await this.poller(cron.spec.template.spec?.source ?? {}, await this.pollOptions(cron));
      if (digest !== a[ANN_DESIRED_DIGEST]) this.log(`dataimportcron: ${key}: source digest is now ${digest}`);
      annotations[ANN_DESIRED_DIGEST] = digest;
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      // The precise reason (a refused address, a closed port) is the administrator's, not the tenant's.
      const cause = e instanceof Error && e.cause instanceof Error ? `: ${e.cause.message}` : '';
      this.log(`dataimportcron: ${key}: poll failed: ${message}${cause}`);
      await this.events.record(cron, 'Warning', 'PollFailed', `cannot read the source's digest: ${message}`);
    }
    if (cron.spec.schedule) {
      const tick = nextTick(parseCron(cron.spec.schedule), now);
      if (tick) annotations[ANN_NEXT_CRON_TIME] = tick.toISOString();
      else delete annotations[ANN_NEXT_CRON_TIME];
    } else if (!annotations[ANN_DESIRED_DIGEST]) {
      // No schedule and the one poll failed: try again in a minute, not on every event.
      annotations[ANN_NEXT_CRON_TIME] = new Date(now.getTime() + 60_000).toISOString();
    } else {
      delete annotations[ANN_NEXT_CRON_TIME];
    }
    try {
      return (await this.client.update(
        DATAIMPORTCRONS,
        { ...cron, metadata: { ...cron.metadata, annotations } },
        { namespace: cron.metadata.namespace },
      )) as Cron;
    } catch (e) {
      if (isStatusError(e, 'Conflict')) this.queue.addRateLimited(key);
      throw e;
    }
  }

  private async pollOptions(cron: Cron): Promise<PollOptions> {
    const opts: PollOptions = { allowLoopback: this.opts.allowLoopback, allowed: this.opts.allowed };
    const secretName = cron.spec.template.spec?.source?.registry?.secretRef ?? cron.spec.template.spec?.source?.http?.secretRef;
    if (secretName) {
      const secret = (await this.client.get(SECRETS, secretName, { namespace: cron.metadata.namespace })) as { data?: Record<string, string> };
      const dec = (k: string) => Buffer.from(secret.data?.[k] ?? '', 'base64').toString('utf8');
      opts.credentials = { username: dec('accessKeyId'), password: dec('secretKey') };
    }
    return opts;
  }

  /** The import's DataVolume: the template, its registry URL pinned to the digest, labelled. */
  private async createImport(cron: Cron, digest: string): Promise<string> {
    const ns = cron.metadata.namespace ?? 'default';
    const name = importName(cron.spec.managedDataSource, digest);
    if (this.dvs.get(`${ns}/${name}`)) return name;
    const template = structuredClone(cron.spec.template) as DataVolume;
    const spec = (template.spec ?? {}) as NonNullable<DataVolume['spec']>;
    const url = spec.source?.registry?.url;
    if (url) spec.source!.registry!.url = pinnedImageUrl(url, digest);
    const labels: Record<string, string> = { ...(template.metadata?.labels ?? {}), [CRON_LABEL]: cron.metadata.name };
    if (cron.spec.retentionPolicy === 'None') labels[CLEANUP_LABEL] = 'true';
    const dv = {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: {
        name,
        namespace: ns,
        labels,
        annotations: { ...(template.metadata?.annotations ?? {}), [ANN_LAST_USE_TIME]: this.now().toISOString() },
      },
      spec,
    };
    try {
      await this.client.create(DATAVOLUMES, dv, { namespace: ns });
    } catch (e) {
      if (!isStatusError(e, 'AlreadyExists')) throw e;
      return name;
    }
    await this.events.record(cron, 'Normal', 'ImportStarted', `importing ${digest} into DataVolume ${name}`);
    return name;
  }

  /** Creates the managed DataSource when absent and points it at the last import. */
  private async updateDataSource(cron: Cron, ds: DataSource | undefined, pvc: { namespace?: string; name: string } | undefined): Promise<void> {
    const ns = cron.metadata.namespace ?? 'default';
    const name = cron.spec.managedDataSource;
    const source = pvc ? { pvc: { namespace: pvc.namespace ?? ns, name: pvc.name } } : undefined;
    if (!ds) {
      const labels: Record<string, string> = { [CRON_LABEL]: cron.metadata.name };
      if (cron.spec.retentionPolicy === 'None') labels[CLEANUP_LABEL] = 'true';
      const obj = { apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataSource', metadata: { name, namespace: ns, labels }, spec: { source: source ?? {} } };
      try {
        await this.client.create(DATASOURCES, obj, { namespace: ns });
      } catch (e) {
        if (!isStatusError(e, 'AlreadyExists')) throw e;
      }
      return;
    }
    const labelled = ds.metadata.labels?.[CRON_LABEL] === cron.metadata.name;
    // Field by field: the server's copy orders the keys as the schema does (name before namespace), so the JSON differs.
    const now = (ds.spec?.source ?? {}) as { pvc?: { name?: string; namespace?: string } } & Obj;
    const same = !source || (Object.keys(now).length === 1 && now.pvc?.name === source.pvc.name && (now.pvc?.namespace ?? ns) === source.pvc.namespace);
    if (labelled && same) return;
    const next = {
      ...ds,
      metadata: { ...ds.metadata, labels: { ...(ds.metadata.labels ?? {}), [CRON_LABEL]: cron.metadata.name } },
      spec: { ...ds.spec, ...(source ? { source } : {}) },
    };
    await this.client.update(DATASOURCES, next, { namespace: ns });
  }

  /** Deletes this cron's imports beyond importsToKeep, oldest first (never the one in use). */
  private async collectGarbage(cron: Cron, inUse: string | undefined): Promise<void> {
    if (cron.spec.garbageCollect === 'Never') return;
    const keep = Math.max(cron.spec.importsToKeep ?? DEFAULT_IMPORTS_TO_KEEP, 0);
    for (const dv of oldImports(this.dvs.byIndex(BY_CRON, cacheKey(cron)), keep, inUse)) {
      this.log(`dataimportcron: ${cacheKey(cron)}: deleting old import ${dv}`);
      await this.deleteDataVolume(cron.metadata.namespace ?? 'default', dv);
    }
  }

  private async deleteDataVolume(ns: string, name: string): Promise<void> {
    await this.client.delete(DATAVOLUMES, name, { namespace: ns }).catch((e: unknown) => {
      if (!isStatusError(e, 'NotFound')) throw e;
    });
  }

  /** A cron that is gone takes what it made with it when its retentionPolicy was None (CDI's cleanup label). */
  private async cleanup(key: string): Promise<void> {
    const { namespace = 'default' } = splitKey(key);
    for (const dv of this.dvs.byIndex(BY_CRON, key)) {
      if (dv.metadata.labels?.[CLEANUP_LABEL] === 'true') await this.deleteDataVolume(namespace, dv.metadata.name);
    }
    for (const ds of this.sources.list().filter((s) => byCron(s)[0] === key && s.metadata.labels?.[CLEANUP_LABEL] === 'true')) {
      await this.client.delete(DATASOURCES, ds.metadata.name, { namespace }).catch((e: unknown) => {
        if (!isStatusError(e, 'NotFound')) throw e;
      });
    }
  }
}

/** Failed, or retrying after errors (the agent keeps the phase and counts restarts). */
function isErroneous(dv: DataVolume): boolean {
  if (phaseOf(dv) === 'Failed') return true;
  const running = (dv.status?.conditions ?? []).find((c) => c.type === 'Running');
  return phaseOf(dv) !== 'Succeeded' && (dv.status?.restartCount ?? 0) > 0 && running?.status === 'False';
}

/** Names of the imports to delete: all but the `keep` newest (by last-use time, then creation), never `inUse`. */
export function oldImports(dvs: readonly DataVolume[], keep: number, inUse: string | undefined): string[] {
  const when = (dv: DataVolume) => dv.metadata.annotations?.[ANN_LAST_USE_TIME] ?? dv.metadata.creationTimestamp ?? '';
  const live = dvs.filter((dv) => !dv.metadata.deletionTimestamp);
  const sorted = [...live].sort((a, b) => (when(a) < when(b) ? 1 : when(a) > when(b) ? -1 : 0));
  return sorted
    .slice(keep)
    .map((dv) => dv.metadata.name)
    .filter((n) => n !== inUse);
}
