/**
 * CDI semantics (from CDI's DataVolume validating webhook): a DataVolume needs exactly one target
 * (storage or pvc) and one source (source, sourceRef or external population), a size unless CDI can
 * infer it from a clone source, and its spec is immutable. Also used for VM dataVolumeTemplates.
 */
import { forbidden, invalid, notSupported, required } from '../errors.ts';
import { cronProblem } from '../cron.ts';
import { tryParseQuantity } from '../quantity.ts';
import type { KubeObject } from '../types.ts';
import { arr, isObj, isSet, jsonEqual, obj, str, type Obj, type SemanticContext } from './util.ts';

const ACCESS_MODES = ['ReadOnlyMany', 'ReadWriteMany', 'ReadWriteOnce', 'ReadWriteOncePod'];
const CONTENT_TYPES = ['kubevirt', 'archive'];
const MIB = 1024 * 1024;

function validateURL(url: unknown, field: string, ctx: SemanticContext): void {
  const u = str(url);
  if (!u) {
    ctx.causes.push(required(field, 'source URL is empty'));
    return;
  }
  let parsed: URL;
  try {
    parsed = new URL(u);
  } catch {
    ctx.causes.push(invalid(field, u, 'Invalid source URL: must be an absolute http:// or https:// URL'));
    return;
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    ctx.causes.push(invalid(field, u, 'Invalid source URL scheme: must be http or https'));
  }
}

/** Validates a DataVolumeSpec at `path` ("spec" or "spec.dataVolumeTemplates[0].spec"). */
export function validateDataVolumeSpec(spec: Obj, path: string, ctx: SemanticContext): void {
  const causes = ctx.causes;
  const pvc = obj(spec.pvc);
  const storage = obj(spec.storage);
  if (!pvc && !storage) {
    causes.push(required(`${path}.storage`, 'a DataVolume needs a target: set spec.storage (recommended) or spec.pvc'));
    return;
  }
  if (pvc && storage) {
    causes.push(invalid(`${path}.pvc`, 'pvc', 'Duplicate storage definition, both target storage and target pvc defined; keep only spec.storage'));
    return;
  }
  const target = (pvc ?? storage) as Obj;
  const targetName = pvc ? 'pvc' : 'storage';
  const source = obj(spec.source);
  const sourceRef = obj(spec.sourceRef);

  // Size: required, except with `storage` and a clone source, where CDI takes the source's size.
  const isClone = !!sourceRef || !!(source && (isSet(source.pvc) || isSet(source.snapshot)));
  const sizeField = `${path}.${targetName}.resources.requests.storage`;
  const size = obj(obj(target.resources)?.requests)?.storage;
  if (isSet(size)) {
    const bytes = tryParseQuantity(size);
    if (bytes !== undefined && bytes <= 0) causes.push(invalid(sizeField, size, `${targetName} size can't be equal or less than zero`));
    else if (bytes !== undefined && bytes < MIB) causes.push(invalid(sizeField, size, `${targetName} size should be at least 1Mi`));
  } else if (!storage || !isClone) {
    causes.push(
      required(sizeField, storage ? 'a size is needed unless the source is a clone (sourceRef, source.pvc, source.snapshot)' : 'pvc size is missing'),
    );
  }

  const modes = arr(target.accessModes);
  if (pvc) {
    if (modes.length === 0) causes.push(required(`${path}.pvc.accessModes`, 'at least 1 access mode is required'));
    else if (modes.length > 1) causes.push(invalid(`${path}.pvc.accessModes`, modes, 'PVC multiple accessModes: give exactly one'));
    modes.forEach((m, i) => {
      if (typeof m === 'string' && !ACCESS_MODES.includes(m)) causes.push(notSupported(`${path}.pvc.accessModes[${i}]`, m, ACCESS_MODES));
    });
  }

  // Externally populated (dataSource/dataSourceRef on the target): no CDI source allowed.
  if (isSet(target.dataSource) || isSet(target.dataSourceRef)) {
    if (source || sourceRef) {
      causes.push(invalid(`${path}.source`, 'source', 'External population is incompatible with Source and SourceRef'));
    }
    return;
  }
  if ((!source && !sourceRef) || (source && sourceRef)) {
    causes.push(
      invalid(`${path}.source`, source ? 'source and sourceRef' : null, 'Data volume should have either Source or SourceRef, or be externally populated'),
    );
    return;
  }
  if (sourceRef) {
    const kind = str(sourceRef.kind);
    if (kind !== undefined && kind !== 'DataSource') causes.push(notSupported(`${path}.sourceRef.kind`, kind, ['DataSource']));
    return;
  }
  const src = source as Obj;
  const set = Object.keys(src).filter((k) => isSet(src[k]));
  if (set.length === 0) {
    causes.push(required(`${path}.source`, 'Missing Data volume source: set one of http, registry, pvc, blank, upload, s3, gcs, imageio, vddk, snapshot'));
    return;
  }
  if (set.length > 1) {
    causes.push(invalid(`${path}.source`, set.join(', '), 'Multiple Data volume sources: set exactly one'));
    return;
  }
  const contentType = str(spec.contentType);
  if (contentType && !CONTENT_TYPES.includes(contentType)) causes.push(notSupported(`${path}.contentType`, contentType, CONTENT_TYPES));
  if (isObj(src.http)) validateURL(src.http.url, `${path}.source.http.url`, ctx);
  if (isObj(src.s3)) validateURL(src.s3.url, `${path}.source.s3.url`, ctx);
  if (isSet(src.blank) && contentType === 'archive') {
    causes.push(invalid(`${path}.contentType`, contentType, 'SourceType cannot be blank and the contentType be archive'));
  }
  const registry = obj(src.registry);
  if (registry) {
    const url = str(registry.url);
    const imageStream = str(registry.imageStream);
    if (!!url === !!imageStream) {
      causes.push(invalid(`${path}.source.registry`, 'registry', 'source registry should have either url or imageStream'));
    } else if (url && !/^(docker|oci-archive):\/\//.test(url)) {
      causes.push(invalid(`${path}.source.registry.url`, url, 'Illegal registry source URL scheme: use docker://<image> or oci-archive://<path>'));
    }
    if (contentType && contentType !== 'kubevirt')
      causes.push(invalid(`${path}.contentType`, contentType, 'ContentType must be kubevirt when Source is Registry'));
  }
  const srcPvc = obj(src.pvc);
  if (srcPvc) {
    if (!str(srcPvc.name)) causes.push(required(`${path}.source.pvc.name`));
    if (!str(srcPvc.namespace)) causes.push(required(`${path}.source.pvc.namespace`));
  }
}

export function validateDataVolume(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return; // structural validation reported it
  validateDataVolumeSpec(spec, 'spec', ctx);
  if (ctx.op === 'update' && ctx.old && !jsonEqual(spec, ctx.old.spec)) {
    ctx.causes.push(forbidden('spec', 'Cannot update DataVolume spec: it is immutable; delete and recreate the DataVolume'));
  }
}

export function validateDataSource(o: KubeObject, ctx: SemanticContext): void {
  const source = obj(obj(o.spec)?.source);
  if (!source) return;
  const set = Object.keys(source).filter((k) => isSet(source[k]));
  if (set.length > 1) ctx.causes.push(invalid('spec.source', set.join(', '), 'a DataSource has at most one source: pvc, snapshot or dataSource'));
  const pvc = obj(source.pvc);
  if (pvc && !str(pvc.name)) ctx.causes.push(required('spec.source.pvc.name'));
}

const GARBAGE_COLLECT = ['Outdated', 'Never'];
const RETENTION = ['RetainAll', 'None'];
const DNS1035 = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;

/**
 * CDI's DataImportCron webhook: a template whose source Vessel can poll for a digest
 * (registry by URL, or http: an extension, CDI polls registries, image streams and PVCs), no
 * sourceRef or contentType, a valid DataVolume spec, a 5-field cron schedule (or "" for no
 * polling after the first import), importsToKeep ≥ 0, garbageCollect Outdated|Never and a
 * managedDataSource that is a DNS-1035 label. The spec is immutable, as CDI's.
 */
export function validateDataImportCron(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  const causes = ctx.causes;
  const before = causes.length;
  if (ctx.op === 'update' && ctx.old && !jsonEqual(spec, ctx.old.spec)) {
    causes.push(forbidden('spec', 'Cannot update DataImportCron spec: it is immutable; delete and recreate the DataImportCron'));
    return;
  }
  const tspec = obj(obj(spec.template)?.spec);
  const source = obj(tspec?.source);
  const registry = obj(source?.registry);
  const http = obj(source?.http);
  if (!tspec || !source || (!registry && !http)) {
    causes.push(required('spec.template.spec.source', 'Missing source: set spec.template.spec.source.registry (docker://...) or source.http'));
  } else {
    const others = Object.keys(source).filter((k) => isSet(source[k]) && k !== 'registry' && k !== 'http');
    if (others.length > 0) causes.push(notSupported(`spec.template.spec.source.${others[0]}`, others[0], ['registry', 'http']));
    if (registry && isSet(registry.imageStream)) causes.push(notSupported('spec.template.spec.source.registry.imageStream', registry.imageStream, ['url']));
    if (isSet(tspec.sourceRef) || isSet(tspec.contentType)) {
      causes.push(invalid('spec.template.spec', isSet(tspec.sourceRef) ? 'sourceRef' : 'contentType', 'Unsettable fields: SourceRef, ContentType'));
    }
    if (causes.length === before) validateDataVolumeSpec(tspec, 'spec.template.spec', ctx);
  }
  const schedule = spec.schedule;
  if (typeof schedule === 'string' && schedule !== '') {
    const problem = cronProblem(schedule);
    if (problem) causes.push(invalid('spec.schedule', schedule, `Illegal cron schedule: ${problem}`));
  }
  const keep = spec.importsToKeep;
  if (typeof keep === 'number' && keep < 0) causes.push(invalid('spec.importsToKeep', keep, 'Illegal ImportsToKeep value: must be 0 or more'));
  const gc = str(spec.garbageCollect);
  if (gc !== undefined && !GARBAGE_COLLECT.includes(gc)) causes.push(notSupported('spec.garbageCollect', gc, GARBAGE_COLLECT));
  const retention = str(spec.retentionPolicy);
  if (retention !== undefined && !RETENTION.includes(retention)) causes.push(notSupported('spec.retentionPolicy', retention, RETENTION));
  const ds = str(spec.managedDataSource);
  if (ds === '' || (ds !== undefined && (ds.length > 63 || !DNS1035.test(ds)))) {
    causes.push(invalid('spec.managedDataSource', ds, 'Illegal ManagedDataSource value: a DNS-1035 label (lowercase letters, digits and -, at most 63)'));
  }
}
