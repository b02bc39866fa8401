/**
 * Decodes Kubernetes protobuf request bodies into the JSON object the rest of Vessel handles.
 * kubectl's typed clients (`kubectl create namespace|configmap|secret|service`, ...) send
 * `application/vnd.kubernetes.protobuf` while happily reading JSON answers, so only this
 * direction is needed. The field tables mirror k8s.io/api core/v1 and apimachinery meta/v1
 * generated.proto, restricted to the kinds Vessel serves.
 */
import { isObject } from '@vessel/api';

export const PROTOBUF_CONTENT_TYPE = 'application/vnd.kubernetes.protobuf';

/** "k8s\0": the prefix Kubernetes puts before the runtime.Unknown envelope. */
const MAGIC = Buffer.from([0x6b, 0x38, 0x73, 0x00]);

/** A body that is not valid protobuf (truncated, wrong wire type, bad envelope). */
export class ProtobufError extends Error {
  override name = 'ProtobufError';
}

/** A well-formed body whose kind Vessel has no protobuf table for: the client should send JSON. */
export class UnsupportedProtobufKind extends ProtobufError {
  override name = 'UnsupportedProtobufKind';
}

export const WireType = { VARINT: 0, I64: 1, LEN: 2, SGROUP: 3, EGROUP: 4, I32: 5 } as const;

/** Reads protobuf wire format from a byte range; every read checks bounds and throws ProtobufError. */
export class WireReader {
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    start = 0,
    readonly end = buf.length,
  ) {
    this.pos = start;
  }

  done(): boolean {
    return this.pos >= this.end;
  }

  /** A field key: its number and wire type. */
  tag(): { field: number; wire: number } {
    const key = this.varint();
    const field = Number(key >> 3n);
    if (field === 0 || field > 0x1fffffff) throw new ProtobufError(`invalid field number ${field} at byte ${this.pos}`);
    return { field, wire: Number(key & 7n) };
  }

  /** An unsigned varint of up to 64 bits; callers reinterpret it (int32, int64, bool). */
  varint(): bigint {
    let v = 0n;
    for (let i = 0; i < 10; i++) {
      this.need(1);
      const b = this.buf[this.pos++];
      v |= BigInt(b & 0x7f) << BigInt(7 * i);
      if (b < 0x80) return BigInt.asUintN(64, v);
    }
    throw new ProtobufError(`varint longer than 10 bytes at byte ${this.pos}`);
  }

  /** int32 fields are sign-extended to 64 bits on the wire, so negative values take 10 bytes. */
  int32(): number {
    return Number(BigInt.asIntN(32, this.varint()));
  }

  int64(): number {
    return Number(BigInt.asIntN(64, this.varint()));
  }

  bool(): boolean {
    return this.varint() !== 0n;
  }

  fixed64(): Uint8Array {
    return this.take(8);
  }

  fixed32(): Uint8Array {
    return this.take(4);
  }

  /** A length-delimited payload (string, bytes, embedded message, map entry). */
  bytes(): Uint8Array {
    const len = this.varint();
    if (len > BigInt(this.end - this.pos)) throw new ProtobufError(`the data is truncated: a length of ${len} at byte ${this.pos} runs past its end`);
    return this.take(Number(len));
  }

  /** Skips one field's value; this is what keeps unknown (newer) fields harmless. */
  skip(wire: number, field: number): void {
    switch (wire) {
      case WireType.VARINT:
        this.varint();
        return;
      case WireType.I64:
        this.take(8);
        return;
      case WireType.LEN:
        this.bytes();
        return;
      case WireType.I32:
        this.take(4);
        return;
      case WireType.SGROUP: {
        // Deprecated groups never appear in Kubernetes messages, but skipping them is cheap.
        for (;;) {
          const t = this.tag();
          if (t.wire === WireType.EGROUP) {
            if (t.field !== field) throw new ProtobufError(`group ${field} closed by end-group ${t.field}`);
            return;
          }
          this.skip(t.wire, t.field);
        }
      }
      default:
        throw new ProtobufError(`unexpected wire type ${wire} for field ${field} at byte ${this.pos}`);
    }
  }

  private need(n: number): void {
    if (this.pos + n > this.end) throw new ProtobufError(`the data is truncated at byte ${this.pos}`);
  }

  private take(n: number): Uint8Array {
    this.need(n);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Field tables. Each entry is `jsonName type`, written the way k8s.io/api's Go types read:
//   string | int32 | int64 | bool | bytes | <Message> | []<type> | map[string]<type> | *<scalar>
// `*` marks Go pointer fields: protobuf sends them only when set, so a false/0/"" there is
// meaningful and kept; plain scalars are always sent and their zero values are dropped, matching
// the `omitempty` JSON clients would have sent. Special messages (Time, MicroTime, Quantity,
// IntOrString, FieldsV1) become the strings/numbers of their JSON form.

const MESSAGES: Record<string, Record<number, string>> = {
  // meta/v1
  ObjectMeta: {
    1: 'name string',
    2: 'generateName string',
    3: 'namespace string',
    4: 'selfLink string',
    5: 'uid string',
    6: 'resourceVersion string',
    7: 'generation int64',
    8: 'creationTimestamp Time',
    9: 'deletionTimestamp Time',
    10: 'deletionGracePeriodSeconds *int64',
    11: 'labels map[string]string',
    12: 'annotations map[string]string',
    13: 'ownerReferences []OwnerReference',
    14: 'finalizers []string',
    17: 'managedFields []ManagedFieldsEntry',
  },
  OwnerReference: {
    5: 'apiVersion string',
    1: 'kind string',
    3: 'name string',
    4: 'uid string',
    6: 'controller *bool',
    7: 'blockOwnerDeletion *bool',
  },
  ManagedFieldsEntry: {
    1: 'manager string',
    2: 'operation string',
    3: 'apiVersion string',
    4: 'time Time',
    6: 'fieldsType string',
    7: 'fieldsV1 FieldsV1',
    8: 'subresource string',
  },
  DeleteOptions: {
    1: 'gracePeriodSeconds *int64',
    2: 'preconditions Preconditions',
    3: 'orphanDependents *bool',
    4: 'propagationPolicy *string',
    5: 'dryRun []string',
    6: 'ignoreStoreReadErrorWithClusterBreakingPotential *bool',
  },
  Preconditions: { 1: 'uid *string', 2: 'resourceVersion *string' },
  Condition: {
    1: 'type string',
    2: 'status string',
    3: 'observedGeneration int64',
    4: 'lastTransitionTime Time',
    5: 'reason string',
    6: 'message string',
  },
  LabelSelector: { 1: 'matchLabels map[string]string', 2: 'matchExpressions []LabelSelectorRequirement' },
  LabelSelectorRequirement: { 1: 'key string', 2: 'operator string', 3: 'values []string' },

  // core/v1 Namespace
  Namespace: { 1: 'metadata ObjectMeta', 2: 'spec NamespaceSpec', 3: 'status NamespaceStatus' },
  NamespaceSpec: { 1: 'finalizers []string' },
  NamespaceStatus: { 1: 'phase string', 2: 'conditions []NamespaceCondition' },
  NamespaceCondition: { 1: 'type string', 2: 'status string', 4: 'lastTransitionTime Time', 5: 'reason string', 6: 'message string' },

  // core/v1 ConfigMap, Secret
  ConfigMap: { 1: 'metadata ObjectMeta', 2: 'data map[string]string', 3: 'binaryData map[string]bytes', 4: 'immutable *bool' },
  Secret: { 1: 'metadata ObjectMeta', 2: 'data map[string]bytes', 4: 'stringData map[string]string', 3: 'type string', 5: 'immutable *bool' },

  // core/v1 Service
  Service: { 1: 'metadata ObjectMeta', 2: 'spec ServiceSpec', 3: 'status ServiceStatus' },
  ServiceSpec: {
    1: 'ports []ServicePort',
    2: 'selector map[string]string',
    3: 'clusterIP string',
    18: 'clusterIPs []string',
    4: 'type string',
    5: 'externalIPs []string',
    7: 'sessionAffinity string',
    8: 'loadBalancerIP string',
    9: 'loadBalancerSourceRanges []string',
    10: 'externalName string',
    11: 'externalTrafficPolicy string',
    12: 'healthCheckNodePort int32',
    13: 'publishNotReadyAddresses bool',
    14: 'sessionAffinityConfig SessionAffinityConfig',
    19: 'ipFamilies []string',
    17: 'ipFamilyPolicy *string',
    20: 'allocateLoadBalancerNodePorts *bool',
    21: 'loadBalancerClass *string',
    22: 'internalTrafficPolicy *string',
    23: 'trafficDistribution *string',
  },
  ServicePort: { 1: 'name string', 2: 'protocol string', 6: 'appProtocol *string', 3: 'port int32', 4: 'targetPort IntOrString', 5: 'nodePort int32' },
  SessionAffinityConfig: { 1: 'clientIP ClientIPConfig' },
  ClientIPConfig: { 1: 'timeoutSeconds *int32' },
  ServiceStatus: { 1: 'loadBalancer LoadBalancerStatus', 2: 'conditions []Condition' },
  LoadBalancerStatus: { 1: 'ingress []LoadBalancerIngress' },
  LoadBalancerIngress: { 1: 'ip string', 2: 'hostname string', 3: 'ipMode *string', 4: 'ports []PortStatus' },
  PortStatus: { 1: 'port int32', 2: 'protocol string', 3: 'error *string' },

  // core/v1 Event
  Event: {
    1: 'metadata ObjectMeta',
    2: 'involvedObject ObjectReference',
    3: 'reason string',
    4: 'message string',
    5: 'source EventSource',
    6: 'firstTimestamp Time',
    7: 'lastTimestamp Time',
    8: 'count int32',
    9: 'type string',
    10: 'eventTime MicroTime',
    11: 'series EventSeries',
    12: 'action string',
    13: 'related ObjectReference',
    14: 'reportingComponent string',
    15: 'reportingInstance string',
  },
  ObjectReference: {
    1: 'kind string',
    2: 'namespace string',
    3: 'name string',
    4: 'uid string',
    5: 'apiVersion string',
    6: 'resourceVersion string',
    7: 'fieldPath string',
  },
  EventSource: { 1: 'component string', 2: 'host string' },
  EventSeries: { 1: 'count int32', 2: 'lastObservedTime MicroTime' },

  // core/v1 PersistentVolumeClaim
  PersistentVolumeClaim: { 1: 'metadata ObjectMeta', 2: 'spec PersistentVolumeClaimSpec', 3: 'status PersistentVolumeClaimStatus' },
  PersistentVolumeClaimSpec: {
    1: 'accessModes []string',
    4: 'selector LabelSelector',
    2: 'resources VolumeResourceRequirements',
    3: 'volumeName string',
    5: 'storageClassName *string',
    6: 'volumeMode *string',
    7: 'dataSource TypedLocalObjectReference',
    8: 'dataSourceRef TypedObjectReference',
    9: 'volumeAttributesClassName *string',
  },
  VolumeResourceRequirements: { 1: 'limits map[string]Quantity', 2: 'requests map[string]Quantity' },
  TypedLocalObjectReference: { 1: 'apiGroup *string', 2: 'kind string', 3: 'name string' },
  TypedObjectReference: { 1: 'apiGroup *string', 2: 'kind string', 3: 'name string', 4: 'namespace *string' },
  PersistentVolumeClaimStatus: {
    1: 'phase string',
    2: 'accessModes []string',
    3: 'capacity map[string]Quantity',
    4: 'conditions []PersistentVolumeClaimCondition',
    5: 'allocatedResources map[string]Quantity',
    7: 'allocatedResourceStatuses map[string]string',
    8: 'currentVolumeAttributesClassName *string',
    9: 'modifyVolumeStatus ModifyVolumeStatus',
  },
  PersistentVolumeClaimCondition: {
    1: 'type string',
    2: 'status string',
    3: 'lastProbeTime Time',
    4: 'lastTransitionTime Time',
    5: 'reason string',
    6: 'message string',
  },
  ModifyVolumeStatus: { 1: 'targetVolumeAttributesClassName string', 2: 'status string' },

  // core/v1 Node
  Node: { 1: 'metadata ObjectMeta', 2: 'spec NodeSpec', 3: 'status NodeStatus' },
  NodeSpec: {
    1: 'podCIDR string',
    7: 'podCIDRs []string',
    3: 'providerID string',
    4: 'unschedulable bool',
    5: 'taints []Taint',
    2: 'externalID string',
  },
  Taint: { 1: 'key string', 2: 'value string', 3: 'effect string', 4: 'timeAdded Time' },
  NodeStatus: {
    1: 'capacity map[string]Quantity',
    2: 'allocatable map[string]Quantity',
    3: 'phase string',
    4: 'conditions []NodeCondition',
    5: 'addresses []NodeAddress',
    6: 'daemonEndpoints NodeDaemonEndpoints',
    7: 'nodeInfo NodeSystemInfo',
    8: 'images []ContainerImage',
    9: 'volumesInUse []string',
    10: 'volumesAttached []AttachedVolume',
  },
  NodeCondition: {
    1: 'type string',
    2: 'status string',
    3: 'lastHeartbeatTime Time',
    4: 'lastTransitionTime Time',
    5: 'reason string',
    6: 'message string',
  },
  NodeAddress: { 1: 'type string', 2: 'address string' },
  NodeDaemonEndpoints: { 1: 'kubeletEndpoint DaemonEndpoint' },
  DaemonEndpoint: { 1: 'Port int32' }, // sic: the JSON name is capitalised upstream
  NodeSystemInfo: {
    1: 'machineID string',
    2: 'systemUUID string',
    3: 'bootID string',
    4: 'kernelVersion string',
    5: 'osImage string',
    6: 'containerRuntimeVersion string',
    7: 'kubeletVersion string',
    8: 'kubeProxyVersion string',
    9: 'operatingSystem string',
    10: 'architecture string',
  },
  ContainerImage: { 1: 'names []string', 2: 'sizeBytes int64' },
  AttachedVolume: { 1: 'name string', 2: 'devicePath string' },

  // The messages below have a JSON form that is not an object; see special().
  Time: { 1: 'seconds int64', 2: 'nanos int32' },
  MicroTime: { 1: 'seconds int64', 2: 'nanos int32' },
  Quantity: { 1: 'string string' },
  IntOrString: { 1: 'type int64', 2: 'intVal int32', 3: 'strVal string' },
  FieldsV1: { 1: 'Raw bytes' },
};

/** Top-level kinds by apiVersion/kind; DeleteOptions is registered in every group version, so any apiVersion goes. */
const KINDS: Record<string, string> = {
  'v1/Namespace': 'Namespace',
  'v1/ConfigMap': 'ConfigMap',
  'v1/Secret': 'Secret',
  'v1/Service': 'Service',
  'v1/Event': 'Event',
  'v1/PersistentVolumeClaim': 'PersistentVolumeClaim',
  'v1/Node': 'Node',
};

const SCALARS = new Set(['string', 'int32', 'int64', 'bool', 'bytes']);
const MAP_VALUES = new Set(['string', 'bytes', 'Quantity']);

interface Field {
  name: string;
  type: string;
  repeated: boolean;
  /** Go pointer: presence is meaningful, so zero values are kept. */
  pointer: boolean;
  /** Value type of a map[string]T field. */
  mapValue?: string;
}

function parseField(message: string, num: number, spec: string): Field {
  const m = /^(\w+) (\[\])?(\*)?(?:map\[string\](\w+)|(\w+))$/.exec(spec);
  if (!m) throw new Error(`protobuf table ${message}.${num}: cannot parse "${spec}"`);
  const [, name, repeated, pointer, mapValue, type] = m;
  if (mapValue !== undefined && !MAP_VALUES.has(mapValue)) throw new Error(`protobuf table ${message}.${name}: unsupported map value ${mapValue}`);
  if (type !== undefined && !SCALARS.has(type) && !(type in MESSAGES)) throw new Error(`protobuf table ${message}.${name}: unknown type ${type}`);
  if (pointer && (type === undefined || !SCALARS.has(type))) throw new Error(`protobuf table ${message}.${name}: only scalars are marked *`);
  return { name, type: mapValue === undefined ? type : 'map', repeated: repeated !== undefined, pointer: pointer !== undefined, mapValue };
}

/** Parsed once at load, so a typo in the tables fails every test rather than one request. */
const TABLES: Record<string, Map<number, Field>> = Object.fromEntries(
  Object.entries(MESSAGES).map(([message, fields]) => [
    message,
    new Map(Object.entries(fields).map(([num, spec]) => [Number(num), parseField(message, Number(num), spec)])),
  ]),
);

/** Names of the messages the decoder knows (for tests). */
export function protobufMessages(): string[] {
  return Object.keys(TABLES);
}

const utf8 = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('utf8');
const base64 = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');

function expectWire(actual: number, expected: number, where: string): void {
  if (actual !== expected) throw new ProtobufError(`${where}: wire type ${actual}, expected ${expected}`);
}

/** Reads one value of a non-map type; returns undefined for values whose JSON form is absent. */
function readValue(r: WireReader, wire: number, type: string, where: string): unknown {
  switch (type) {
    case 'string':
      expectWire(wire, WireType.LEN, where);
      return utf8(r.bytes());
    case 'bytes':
      expectWire(wire, WireType.LEN, where);
      return base64(r.bytes());
    case 'int32':
      expectWire(wire, WireType.VARINT, where);
      return r.int32();
    case 'int64':
      expectWire(wire, WireType.VARINT, where);
      return r.int64();
    case 'bool':
      expectWire(wire, WireType.VARINT, where);
      return r.bool();
    default: {
      expectWire(wire, WireType.LEN, where);
      const data = r.bytes();
      return SPECIAL.has(type) ? special(type, data, where) : decodeMessage(type, data, where);
    }
  }
}

const SPECIAL = new Set(['Time', 'MicroTime', 'Quantity', 'IntOrString', 'FieldsV1']);

/** JSON forms of the SPECIAL messages; undefined means absent. */
function special(type: string, data: Uint8Array, where: string): unknown {
  switch (type) {
    case 'Time':
    case 'MicroTime': {
      // Kubernetes marshals the zero time as no bytes at all, and JSON clients send null for it.
      if (data.length === 0) return undefined;
      const t = decodeMessage(type, data, where) as { seconds?: number; nanos?: number };
      return formatTime(t.seconds ?? 0, t.nanos ?? 0, type === 'MicroTime', where);
    }
    case 'Quantity':
      return (decodeMessage(type, data, where) as { string?: string }).string ?? '';
    case 'IntOrString': {
      const v = decodeMessage(type, data, where) as { type?: number; intVal?: number; strVal?: string };
      // 0 and "" both mean "unset" to Kubernetes' defaulting (e.g. targetPort falls back to port).
      return v.type === 1 ? v.strVal || undefined : v.intVal || undefined;
    }
    case 'FieldsV1': {
      const raw = new WireReader(data);
      let json: string | undefined;
      while (!raw.done()) {
        const { field, wire } = raw.tag();
        if (field === 1 && wire === WireType.LEN) json = utf8(raw.bytes());
        else raw.skip(wire, field);
      }
      if (json === undefined) return undefined;
      try {
        return JSON.parse(json) as unknown;
      } catch {
        throw new ProtobufError(`${where}: fieldsV1 is not JSON`);
      }
    }
    default:
      throw new Error(`no special decoding for ${type}`);
  }
}

function formatTime(seconds: number, nanos: number, micro: boolean, where: string): string {
  const d = new Date(seconds * 1000);
  const year = d.getUTCFullYear();
  if (Number.isNaN(d.getTime()) || year < 0 || year > 9999) throw new ProtobufError(`${where}: timestamp ${seconds}s is out of range`);
  const base = d.toISOString().slice(0, 19); // YYYY-MM-DDTHH:MM:SS
  // metav1.Time is second-precision in JSON; MicroTime always carries six fractional digits.
  return micro ? `${base}.${String(Math.floor(nanos / 1000)).padStart(6, '0')}Z` : `${base}Z`;
}

const isZero = (v: unknown): boolean => v === '' || v === 0 || v === false;

/** Decodes one message by its table; unknown field numbers are skipped. */
function decodeMessage(type: string, data: Uint8Array, where: string): Record<string, unknown> {
  const table = TABLES[type];
  const out: Record<string, unknown> = {};
  const r = new WireReader(data);
  while (!r.done()) {
    const { field, wire } = r.tag();
    const f = table.get(field);
    if (!f) {
      r.skip(wire, field);
      continue;
    }
    const path = `${where}.${f.name}`;
    if (f.type === 'map') {
      expectWire(wire, WireType.LEN, path);
      const [k, v] = readMapEntry(r.bytes(), f.mapValue!, path);
      const map = (out[f.name] ??= {}) as Record<string, unknown>;
      // defineProperty, not assignment: a key such as "__proto__" is data and must stay a key.
      Object.defineProperty(map, k, { value: v, enumerable: true, writable: true, configurable: true });
      continue;
    }
    const value = readValue(r, wire, f.type, path);
    if (f.repeated) {
      // Repeated elements are kept as sent, even "" (a list of strings is data, not defaults).
      ((out[f.name] ??= []) as unknown[]).push(value ?? null);
    } else if (value === undefined || (isZero(value) && !f.pointer)) {
      // Not present in JSON terms: omitempty would have dropped it; protobuf cannot say null.
    } else if (isObject(value) && isObject(out[f.name])) {
      Object.assign(out[f.name] as object, value); // protobuf merges a repeated singular message
    } else {
      out[f.name] = value;
    }
  }
  return out;
}

function readMapEntry(data: Uint8Array, valueType: string, where: string): [string, unknown] {
  const r = new WireReader(data);
  let key = '';
  let value: unknown;
  while (!r.done()) {
    const { field, wire } = r.tag();
    if (field === 1) key = readValue(r, wire, 'string', `${where}.key`) as string;
    else if (field === 2) value = readValue(r, wire, valueType, `${where}[${JSON.stringify(key)}]`);
    else r.skip(wire, field);
  }
  // An entry without a value carries the zero value: "" for strings and bytes, "0" for quantities.
  return [key, value ?? (valueType === 'Quantity' ? '0' : '')];
}

/**
 * Decodes a Kubernetes protobuf body ("k8s\0" + runtime.Unknown) into its JSON object,
 * `{apiVersion, kind, ...fields}`. Throws UnsupportedProtobufKind for kinds without a table
 * and ProtobufError for anything malformed.
 */
export function decodeProtobufObject(body: Buffer): Record<string, unknown> {
  if (body.length < MAGIC.length || !body.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new ProtobufError('the body does not start with the Kubernetes protobuf prefix "k8s\\0"');
  }
  const r = new WireReader(body, MAGIC.length);
  let apiVersion = '',
    kind = '',
    contentEncoding = '';
  let raw: Uint8Array = new Uint8Array(0);
  while (!r.done()) {
    const { field, wire } = r.tag();
    if (field === 1) {
      // typeMeta { apiVersion = 1, kind = 2 }
      expectWire(wire, WireType.LEN, 'typeMeta');
      const tm = new WireReader(r.bytes());
      while (!tm.done()) {
        const t = tm.tag();
        if (t.field === 1) apiVersion = readValue(tm, t.wire, 'string', 'typeMeta.apiVersion') as string;
        else if (t.field === 2) kind = readValue(tm, t.wire, 'string', 'typeMeta.kind') as string;
        else tm.skip(t.wire, t.field);
      }
    } else if (field === 2) {
      expectWire(wire, WireType.LEN, 'raw');
      raw = r.bytes();
    } else if (field === 3) {
      contentEncoding = readValue(r, wire, 'string', 'contentEncoding') as string;
    } else {
      r.skip(wire, field); // contentType (4) and anything newer
    }
  }
  if (!kind) throw new ProtobufError('the protobuf envelope names no kind');
  const message = kind === 'DeleteOptions' ? kind : KINDS[`${apiVersion}/${kind}`];
  if (!message) {
    throw new UnsupportedProtobufKind(`protobuf body of kind ${kind} (${apiVersion}) is not supported by Vessel; send JSON (application/json)`);
  }
  if (contentEncoding)
    throw new UnsupportedProtobufKind(`protobuf content encoding "${contentEncoding}" is not supported by Vessel; send JSON (application/json)`);
  return { apiVersion, kind, ...decodeMessage(message, raw, kind) };
}
