/**
 * Semantics of the core kinds Vessel serves, following kube-apiserver's validation for the parts a
 * user hits first: Service ports and types, PVC access modes/size/immutability, Secret and ConfigMap
 * keys, encodings, sizes and `immutable`, StorageClass enums and immutability.
 */
import { duplicate, forbidden, invalid, notSupported, required, tooLong } from '../errors.ts';
import { validateLabels } from '../meta.ts';
import { dns1123Label, qualifiedName } from '../names.ts';
import { parseIPv4 } from '../ip.ts';
import { tryParseQuantity } from '../quantity.ts';
import type { KubeObject } from '../types.ts';
import { arr, isObj, isSet, jsonEqual, obj, str, type Obj, type SemanticContext } from './util.ts';

const SERVICE_TYPES = ['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName'];
const PROTOCOLS = ['TCP', 'UDP', 'SCTP'];
const SESSION_AFFINITY = ['ClientIP', 'None'];
const ACCESS_MODES = ['ReadOnlyMany', 'ReadWriteMany', 'ReadWriteOnce', 'ReadWriteOncePod'];
const VOLUME_MODES = ['Block', 'Filesystem'];
const RECLAIM_POLICIES = ['Delete', 'Retain'];
const BINDING_MODES = ['Immediate', 'WaitForFirstConsumer'];
const CONFIG_KEY_RE = /^[-._a-zA-Z0-9]+$/;
const MAX_SECRET_SIZE = 1024 * 1024;
const PORT_RANGE = 'must be between 1 and 65535, inclusive';
const IANA_SVC_NAME_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

function checkPort(v: unknown, field: string, ctx: SemanticContext): void {
  if (typeof v === 'number' && (!Number.isInteger(v) || v < 1 || v > 65535)) ctx.causes.push(invalid(field, v, PORT_RANGE));
}

/** A named target port must be an IANA service name (what container ports are named). */
function checkPortName(v: string, field: string, ctx: SemanticContext): void {
  if (v.length > 15 || !IANA_SVC_NAME_RE.test(v) || !/[a-z]/.test(v) || v.includes('--')) {
    ctx.causes.push(
      invalid(
        field,
        v,
        'must be a port number (1-65535) or an IANA service name: at most 15 lower case alphanumeric characters or "-", with at least one letter',
      ),
    );
  }
}

export function validateService(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  const causes = ctx.causes;
  const type = str(spec.type) ?? 'ClusterIP';
  if (!SERVICE_TYPES.includes(type)) causes.push(notSupported('spec.type', type, SERVICE_TYPES));
  if (type === 'ExternalName' && !str(spec.externalName)) causes.push(required('spec.externalName', 'an ExternalName service needs spec.externalName'));
  const affinity = str(spec.sessionAffinity);
  if (affinity !== undefined && !SESSION_AFFINITY.includes(affinity)) causes.push(notSupported('spec.sessionAffinity', affinity, SESSION_AFFINITY));
  const ports = arr(spec.ports);
  const headless = spec.clusterIP === 'None';
  if (ports.length === 0 && type !== 'ExternalName' && !headless) causes.push(required('spec.ports', 'a service needs at least one port (or clusterIP: None)'));
  const seenNames = new Set<string>();
  const seenPorts = new Set<string>();
  ports.forEach((p, i) => {
    if (!isObj(p)) return;
    const f = `spec.ports[${i}]`;
    const name = str(p.name);
    if (ports.length > 1 && !name) causes.push(required(`${f}.name`, 'ports need names when a service has more than one'));
    if (name) {
      for (const e of dns1123Label(name)) causes.push(invalid(`${f}.name`, name, e));
      if (seenNames.has(name)) causes.push(duplicate(`${f}.name`, name));
      seenNames.add(name);
    }
    checkPort(p.port, `${f}.port`, ctx);
    const protocol = str(p.protocol) ?? 'TCP';
    if (!PROTOCOLS.includes(protocol)) causes.push(notSupported(`${f}.protocol`, protocol, PROTOCOLS));
    const key = `${String(p.port)}/${protocol}`;
    if (seenPorts.has(key)) causes.push(duplicate(f, key, 'the same port and protocol appear twice'));
    seenPorts.add(key);
    if (typeof p.targetPort === 'number') checkPort(p.targetPort, `${f}.targetPort`, ctx);
    else if (typeof p.targetPort === 'string') {
      if (/^[0-9]+$/.test(p.targetPort)) checkPort(Number(p.targetPort), `${f}.targetPort`, ctx);
      else checkPortName(p.targetPort, `${f}.targetPort`, ctx);
    }
    if (isSet(p.nodePort)) {
      checkPort(p.nodePort, `${f}.nodePort`, ctx);
      if (type === 'ClusterIP') causes.push(forbidden(`${f}.nodePort`, "may not be used when `type` is 'ClusterIP'"));
    }
  });
  validateLabels(spec.selector, 'spec.selector', causes);
  validateClusterIP(spec, type, causes);
  if (ctx.op === 'update' && ctx.old) {
    const oldIP = str(obj(ctx.old.spec)?.clusterIP);
    const newIP = str(spec.clusterIP);
    if (oldIP && newIP !== undefined && newIP !== '' && newIP !== oldIP) causes.push(invalid('spec.clusterIP', newIP, 'field is immutable'));
  }
}

/**
 * spec.clusterIP and spec.clusterIPs as kube-apiserver checks them before allocating: an IPv4
 * address (only IPv4 is served), "None" (headless) or empty; clusterIPs[0] is clusterIP. Whether
 * the address is in the service range and free is the allocator's to say (apiserver/services.ts).
 */
function validateClusterIP(spec: Obj, type: string, causes: SemanticContext['causes']): void {
  const ip = str(spec.clusterIP);
  const ips = arr(spec.clusterIPs);
  if (ip !== undefined && ip !== '' && ip !== 'None' && parseIPv4(ip) === undefined) {
    causes.push(
      invalid('spec.clusterIP', ip, 'must be a valid IPv4 address such as 10.96.0.10 (or "None" for a headless service, or empty to have one allocated)'),
    );
  }
  if (ips.length > 1) causes.push(invalid('spec.clusterIPs', ips, 'at most one address: only IPv4 (single-stack) is served'));
  if (ips.length === 1 && ip !== undefined && ip !== '' && ips[0] !== ip)
    causes.push(invalid('spec.clusterIPs', ips, 'must hold the same address as spec.clusterIP'));
  const effective = ip || (typeof ips[0] === 'string' ? ips[0] : undefined);
  if (effective === 'None' && (type === 'NodePort' || type === 'LoadBalancer'))
    causes.push(invalid('spec.clusterIP', 'None', `may not be set to 'None' for ${type} services`));
  if (type === 'ExternalName' && effective) causes.push(forbidden('spec.clusterIP', 'may not be set for ExternalName services'));
}

/** The claim's spec.resources.requests.storage as given (quantity string or number), if any. */
function storageRequest(spec: Obj | undefined): unknown {
  return obj(obj(spec?.resources)?.requests)?.storage;
}

/**
 * What an update may not change, as Kubernetes compares it: all of the spec but
 * volumeAttributesClassName; requests.storage only while the claim is Bound (as a value, so
 * "1Gi" and "1073741824" are the same); volumeName and storageClassName while the other side
 * has none (binding sets volumeName once; a claim without a class may get the default one).
 */
function immutablePart(s: Obj, other: Obj, bound: boolean): Obj {
  const { resources, volumeAttributesClassName: _v, ...rest } = s;
  const res = obj(resources);
  const requests = obj(res?.requests);
  let fixedResources: unknown = resources;
  if (res && requests && 'storage' in requests) {
    const { storage, ...otherRequests } = requests;
    fixedResources = { ...res, requests: { ...otherRequests, ...(bound ? {} : { storage: tryParseQuantity(storage) ?? storage }) } };
  }
  return {
    ...rest,
    volumeMode: rest.volumeMode ?? 'Filesystem', // defaulted on create; a PUT without it is no change
    resources: fixedResources,
    volumeName: other.volumeName ? s.volumeName : undefined,
    storageClassName: other.storageClassName ? s.storageClassName : undefined,
  };
}

/** kube-apiserver's message (PersistentVolumeClaimResize admission) when a claim's class does not allow expansion. */
export const PVC_RESIZE_NOT_ALLOWED = 'only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize';

/**
 * Kubernetes' PersistentVolumeClaimResize admission, for whoever can see the StorageClass (the
 * API server's admission, the agent): undefined when the update may go on, else why it is
 * Forbidden (403). Only growing a claim is checked; shrinking is refused by validation (422).
 */
export function pvcResizeRefusal(pvc: KubeObject, old: KubeObject, storageClass: KubeObject | undefined): string | undefined {
  const newSize = tryParseQuantity(storageRequest(obj(pvc.spec)));
  const oldSize = tryParseQuantity(storageRequest(obj(old.spec)));
  if (newSize === undefined || oldSize === undefined || newSize <= oldSize) return undefined;
  if (str(obj(old.status)?.phase) !== 'Bound') return 'Only bound persistent volume claims can be expanded';
  const className = str(obj(pvc.spec)?.storageClassName);
  const oldClassName = str(obj(old.spec)?.storageClassName);
  if (!className || className !== oldClassName || !storageClass || storageClass.metadata?.name !== className || storageClass.allowVolumeExpansion !== true) {
    return PVC_RESIZE_NOT_ALLOWED;
  }
  return undefined;
}

export function validatePersistentVolumeClaim(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) {
    ctx.causes.push(required('spec', 'a claim needs spec.accessModes and spec.resources.requests.storage'));
    return;
  }
  const causes = ctx.causes;
  const modes = arr(spec.accessModes);
  if (modes.length === 0) causes.push(required('spec.accessModes', 'at least 1 access mode is required'));
  modes.forEach((m, i) => {
    if (typeof m === 'string' && !ACCESS_MODES.includes(m)) causes.push(notSupported(`spec.accessModes[${i}]`, m, ACCESS_MODES));
  });
  if (modes.includes('ReadWriteOncePod') && modes.length > 1)
    causes.push(forbidden('spec.accessModes', 'may not use ReadWriteOncePod with other access modes'));
  const mode = str(spec.volumeMode);
  if (mode !== undefined && !VOLUME_MODES.includes(mode)) causes.push(notSupported('spec.volumeMode', mode, VOLUME_MODES));
  const storage = storageRequest(spec);
  if (!isSet(storage)) causes.push(required('spec.resources[storage]', 'set spec.resources.requests.storage (e.g. 10Gi)'));
  else {
    const bytes = tryParseQuantity(storage);
    if (bytes !== undefined && bytes <= 0) causes.push(invalid('spec.resources[storage]', storage, 'must be greater than zero'));
  }
  if (ctx.op === 'update' && ctx.old) {
    const oldSpec = obj(ctx.old.spec);
    // The status is the stored one (an update of the main resource cannot change it).
    const bound = str(obj(ctx.old.status)?.phase) === 'Bound';
    if (oldSpec && !jsonEqual(immutablePart(spec, oldSpec, bound), immutablePart(oldSpec, oldSpec, bound))) {
      causes.push(forbidden('spec', 'spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims'));
    }
    // Volumes only grow (Kubernetes without RecoverVolumeExpansionFailure).
    const newSize = tryParseQuantity(storage);
    const oldSize = tryParseQuantity(storageRequest(oldSpec));
    if (newSize !== undefined && oldSize !== undefined && newSize < oldSize) {
      causes.push(forbidden('spec.resources.requests.storage', 'field can not be less than previous value'));
    }
  }
}

function validateDataKeys(map: unknown, field: string, ctx: SemanticContext, base64: boolean): number {
  let size = 0;
  if (!isObj(map)) return 0;
  for (const [k, v] of Object.entries(map)) {
    if (!CONFIG_KEY_RE.test(k) || k === '.' || k === '..' || k.startsWith('..') || k.length > 253) {
      ctx.causes.push(
        invalid(
          field,
          k,
          "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
        ),
      );
    }
    if (typeof v !== 'string') continue;
    if (base64) {
      const clean = v.replace(/[\r\n]/g, '');
      if (clean.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(clean)) {
        ctx.causes.push(invalid(`${field}[${k}]`, '<value>', 'illegal base64 data: values under data must be base64-encoded (use stringData for plain text)'));
      } else size += Buffer.from(clean, 'base64').length;
    } else size += Buffer.byteLength(v);
  }
  return size;
}

function checkImmutable(o: KubeObject, ctx: SemanticContext, fields: string[]): void {
  if (ctx.op !== 'update' || !ctx.old || ctx.old.immutable !== true) return;
  if (o.immutable !== true) ctx.causes.push(forbidden('immutable', 'field is immutable when `immutable` is set'));
  for (const f of fields) {
    if (!jsonEqual(o[f] ?? {}, ctx.old[f] ?? {})) ctx.causes.push(forbidden(f, 'field is immutable when `immutable` is set'));
  }
}

/**
 * Kubernetes' conversion of a submitted Secret: each `stringData` entry is written into `data`
 * (base64, overriding a `data` entry of the same key) and `stringData` is dropped, so it is
 * never stored nor returned. Applied in place, after validation (which names stringData's keys).
 */
export function mergeStringData(o: KubeObject): void {
  const strings = obj(o.stringData);
  if (o.stringData === undefined) return;
  delete o.stringData;
  if (!strings) return;
  const data: Obj = { ...(obj(o.data) ?? {}) };
  for (const [k, v] of Object.entries(strings)) if (typeof v === 'string') data[k] = Buffer.from(v, 'utf8').toString('base64');
  if (Object.keys(data).length) o.data = data;
}

export function validateSecret(o: KubeObject, ctx: SemanticContext): void {
  let size = validateDataKeys(o.data, 'data', ctx, true);
  size += validateDataKeys(o.stringData, 'stringData', ctx, false);
  if (size > MAX_SECRET_SIZE) ctx.causes.push(tooLong('data', MAX_SECRET_SIZE, `must have at most ${MAX_SECRET_SIZE} bytes`));
  const type = str(o.type);
  if (type === 'kubernetes.io/dockerconfigjson' && !isSet(obj(o.data)?.['.dockerconfigjson']) && !isSet(obj(o.stringData)?.['.dockerconfigjson'])) {
    ctx.causes.push(required('data[.dockerconfigjson]'));
  }
  if (ctx.op === 'update' && ctx.old) {
    const oldType = str(ctx.old.type) ?? 'Opaque';
    if ((type ?? 'Opaque') !== oldType) ctx.causes.push(invalid('type', type ?? 'Opaque', 'field is immutable'));
  }
  // An immutable Secret's data may not change through stringData either.
  const merged = structuredClone(o);
  mergeStringData(merged);
  checkImmutable(merged, ctx, ['data']);
}

export function validateConfigMap(o: KubeObject, ctx: SemanticContext): void {
  let size = validateDataKeys(o.data, 'data', ctx, false);
  size += validateDataKeys(o.binaryData, 'binaryData', ctx, true);
  const data = obj(o.data) ?? {};
  for (const k of Object.keys(obj(o.binaryData) ?? {})) {
    if (k in data) ctx.causes.push(duplicate('data', k, 'duplicate of key present in binaryData'));
  }
  if (size > MAX_SECRET_SIZE) ctx.causes.push(tooLong('data', MAX_SECRET_SIZE, `must have at most ${MAX_SECRET_SIZE} bytes`));
  checkImmutable(o, ctx, ['data', 'binaryData']);
}

export function validateStorageClass(o: KubeObject, ctx: SemanticContext): void {
  const provisioner = str(o.provisioner);
  // Kubernetes checks a qualified name (`kubernetes.io/host-path`), not a DNS subdomain.
  if (provisioner) for (const e of qualifiedName(provisioner.toLowerCase())) ctx.causes.push(invalid('provisioner', provisioner, e));
  const rp = str(o.reclaimPolicy);
  if (rp !== undefined && !RECLAIM_POLICIES.includes(rp)) ctx.causes.push(notSupported('reclaimPolicy', rp, RECLAIM_POLICIES));
  const bm = str(o.volumeBindingMode);
  if (bm !== undefined && !BINDING_MODES.includes(bm)) ctx.causes.push(notSupported('volumeBindingMode', bm, BINDING_MODES));
  if (ctx.op === 'update' && ctx.old) {
    for (const f of ['parameters', 'provisioner', 'reclaimPolicy', 'volumeBindingMode']) {
      if (!jsonEqual(o[f], ctx.old[f])) ctx.causes.push(forbidden(f, `updates to ${f} are forbidden.`));
    }
  }
}
