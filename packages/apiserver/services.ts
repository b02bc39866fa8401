/**
 * ClusterIPs and NodePorts, allocated in the API server's write path as kube-apiserver does, so
 * the create response already carries spec.clusterIP(s) and every nodePort (docs/network.md).
 *
 * - A ClusterIP is an IPAddress object (networking.k8s.io/v1) named by the address, with
 *   parentRef {group: '', resource: 'services', namespace, name}: creating it is the allocation,
 *   and the store refuses a second create of one name, so two Services (or two API servers on
 *   one etcd) never get one address.
 * - A NodePort is a store key of its own (`/registry/vessel.io/servicenodeports/<port>`), made
 *   with the store's create for the same reason. Kubernetes keeps one bitmap under a single key
 *   instead; one key per port needs no read-modify-write retries and releases without one.
 *   These keys are no API kind: nothing but this file reads them.
 *
 * Order: validate, allocate, store the Service. When storing fails the allocations are undone
 * at once; when the process dies in between (nothing can undo then), `repair` removes
 * allocations whose Service does not exist (or is another one by uid) once they are older than
 * a grace period, as kube-apiserver's repair controllers do. Releases follow the Service's
 * deletion (its namespace's too: that deletes every Service through the same path).
 */
import {
  DEFAULT_SERVICE_CIDR,
  firstFree,
  ipam,
  formatIPv4,
  NODE_PORT_RANGE,
  parseCidr,
  parseIPv4,
  refs,
  type Cidr,
  type FieldCause,
  type KindInfo,
  type KubeObject,
} from '@vessel/api';
import { isStoreError, type Store } from '@vessel/store';
import { ApiError, invalid } from './errors.ts';
import type { StoredObject } from './objects.ts';

type Obj = Record<string, unknown>;

export const SERVICES_NETWORK = 'services';
const { NETWORK_LABEL, PARENT_UID_ANNOTATION: PARENT_UID, CIDR_ANNOTATION } = ipam;
const NODE_PORT_PREFIX = '/registry/vessel.io/servicenodeports/';
/** Allocations younger than this are never repaired away: their Service may be on its way to the store. */
export const REPAIR_GRACE_MS = 60_000;

/** What ServiceAllocator needs of Resources (an interface, so the two files do not import each other). */
export interface IPAddressWriter {
  create(info: KindInfo, namespace: string | undefined, body: unknown): Promise<{ object: StoredObject }>;
  delete(info: KindInfo, namespace: string | undefined, name: string, options?: { preconditions?: { uid?: string } }): Promise<unknown>;
  get(info: KindInfo, namespace: string | undefined, name: string): Promise<StoredObject>;
}

interface NodePortHolder {
  namespace: string;
  name: string;
  uid: string;
  at: string;
}
interface Held {
  ip?: string;
  nodePorts: Set<number>;
}

/** What one write allocated: undone when the Service is not stored, and what it no longer holds released when it is. */
export interface Allocation {
  /** Frees what this write allocated (the Service was not stored). */
  rollback(): Promise<void>;
  /** Frees what the stored Service held before and holds no longer (after an update). */
  commit(): Promise<void>;
}

const NOTHING: Allocation = { rollback: async () => {}, commit: async () => {} };
const servicesInfo = () => refs.SERVICES;

export class ServiceAllocator {
  readonly cidr: Cidr;

  constructor(
    private readonly store: Store,
    private readonly writer: IPAddressWriter,
    serviceCidr: string = DEFAULT_SERVICE_CIDR,
  ) {
    const cidr = parseCidr(serviceCidr);
    if (!cidr) throw new Error(`invalid service CIDR "${serviceCidr}": must be an IPv4 range such as 10.96.0.0/16`);
    this.cidr = cidr;
  }

  /**
   * Fills `svc` (about to be stored, uid set) with its clusterIP(s) and nodePorts and records
   * them; `old` is the stored Service on an update, whose addresses it keeps. Throws a 422 naming
   * the field when a requested address or port is outside its range or taken. A dry run checks
   * and fills in nothing it would have to allocate.
   */
  async allocate(svc: StoredObject, old: StoredObject | undefined, dryRun = false): Promise<Allocation> {
    const spec = (svc.spec ?? {}) as Obj;
    const type = typeof spec.type === 'string' ? spec.type : 'ClusterIP';
    const held = heldBy(old);
    const made: (() => Promise<void>)[] = [];
    const keep: Held = { nodePorts: new Set() };
    const fail = async (causes: FieldCause[]): Promise<never> => {
      for (const undo of made) await undo().catch(() => undefined);
      throw invalid('Service', '', svc.metadata.name, causes);
    };

    // The ClusterIP: kept across updates that leave it out (a PUT of a manifest without it).
    const oldSpec = (old?.spec ?? {}) as Obj;
    const requested =
      firstString(spec.clusterIP) ||
      firstString((spec.clusterIPs as unknown[] | undefined)?.[0]) ||
      // A headless Service stays headless when a PUT leaves clusterIP out (kube's patchAllocatedValues).
      (oldSpec.type !== 'ExternalName' && oldSpec.clusterIP === 'None' ? 'None' : '');
    if (type === 'ExternalName') {
      // No address: ExternalName services are DNS names only.
    } else if (requested === 'None') {
      // Only reachable from an update of a headless Service (validation refuses it in the body).
      if (type === 'NodePort' || type === 'LoadBalancer') return fail([causeOf('spec.clusterIP', 'None', `may not be set to 'None' for ${type} services`)]);
      spec.clusterIP = 'None';
      spec.clusterIPs = ['None'];
    } else {
      const wanted = requested || held.ip;
      let ip: string | undefined;
      if (wanted && wanted === held.ip) ip = wanted;
      else if (wanted) {
        const n = parseIPv4(wanted);
        if (n === undefined) return fail([causeOf('spec.clusterIP', wanted, 'must be a valid IPv4 address')]);
        if (!(n > this.cidr.base && n < this.cidr.base + this.cidr.size - 1)) {
          return fail([causeOf('spec.clusterIP', wanted, `provided IP is not in the valid range. The range of valid IPs is ${this.cidr.text}`)]);
        }
        if (dryRun) {
          if (await this.ipTaken(wanted)) return fail([causeOf('spec.clusterIP', wanted, 'provided IP is already allocated')]);
        } else if (!(await this.claimIP(wanted, svc))) return fail([causeOf('spec.clusterIP', wanted, 'provided IP is already allocated')]);
        else made.push(() => this.releaseIP(wanted, svc.metadata.uid));
        ip = wanted;
      } else if (!dryRun) {
        ip = await this.claimFreeIP(svc);
        if (!ip) return fail([causeOf('spec.clusterIP', '', `failed to allocate a ClusterIP: the range ${this.cidr.text} is full`)]);
        const got = ip;
        made.push(() => this.releaseIP(got, svc.metadata.uid));
      }
      if (ip) {
        keep.ip = ip;
        spec.clusterIP = ip;
        spec.clusterIPs = [ip];
        spec.ipFamilies = ['IPv4'];
        spec.ipFamilyPolicy = 'SingleStack';
      }
    }

    // NodePorts: NodePort and LoadBalancer services, one per port (TCP and UDP of one port may share one).
    if (type === 'NodePort' || type === 'LoadBalancer') {
      const ports = Array.isArray(spec.ports) ? (spec.ports as Obj[]) : [];
      const oldPorts = Array.isArray((old?.spec as Obj | undefined)?.ports) ? ((old!.spec as Obj).ports as Obj[]) : [];
      const mine = new Map<number, Set<string>>();
      for (let i = 0; i < ports.length; i++) {
        const p = ports[i];
        if (typeof p !== 'object' || p === null) continue;
        const protocol = typeof p.protocol === 'string' ? p.protocol : 'TCP';
        const previous = oldPorts.find((q) => q.port === p.port && (q.protocol ?? 'TCP') === protocol)?.nodePort;
        const want =
          typeof p.nodePort === 'number' && p.nodePort !== 0 ? p.nodePort : typeof previous === 'number' && held.nodePorts.has(previous) ? previous : undefined;
        const field = `spec.ports[${i}].nodePort`;
        let port: number | undefined;
        if (want !== undefined) {
          if (mine.get(want)?.has(protocol)) return fail([{ reason: 'FieldValueDuplicate', field, message: `Duplicate value: ${want}` }]);
          if (want < NODE_PORT_RANGE.min || want > NODE_PORT_RANGE.max) {
            return fail([
              causeOf(field, want, `provided port is not in the valid range. The range of valid ports is ${NODE_PORT_RANGE.min}-${NODE_PORT_RANGE.max}`),
            ]);
          }
          if (!held.nodePorts.has(want) && !mine.has(want)) {
            if (dryRun) {
              if (await this.store.get(NODE_PORT_PREFIX + want)) return fail([causeOf(field, want, 'provided port is already allocated')]);
            } else if (!(await this.claimNodePort(want, svc))) return fail([causeOf(field, want, 'provided port is already allocated')]);
            else made.push(() => this.releaseNodePort(want, svc.metadata.uid));
          }
          port = want;
        } else if (!dryRun) {
          port = await this.claimFreeNodePort(svc);
          if (port === undefined)
            return fail([causeOf(field, 0, `failed to allocate a nodePort: the range ${NODE_PORT_RANGE.min}-${NODE_PORT_RANGE.max} is full`)]);
          const got = port;
          made.push(() => this.releaseNodePort(got, svc.metadata.uid));
        }
        if (port !== undefined) {
          p.nodePort = port;
          keep.nodePorts.add(port);
          mine.set(port, (mine.get(port) ?? new Set()).add(protocol));
        }
      }
    }
    svc.spec = spec;
    if (dryRun || (made.length === 0 && !old)) return NOTHING;
    return {
      rollback: async () => {
        for (const undo of made) await undo().catch(() => undefined);
      },
      commit: async () => {
        if (!old) return;
        if (held.ip && held.ip !== keep.ip) await this.releaseIP(held.ip, old.metadata.uid).catch(() => undefined);
        for (const p of held.nodePorts) if (!keep.nodePorts.has(p)) await this.releaseNodePort(p, old.metadata.uid).catch(() => undefined);
      },
    };
  }

  /** Frees everything a deleted Service held. */
  async release(svc: KubeObject): Promise<void> {
    const uid = svc.metadata?.uid;
    if (!uid) return;
    const held = heldBy(svc);
    if (held.ip) await this.releaseIP(held.ip, uid);
    for (const p of held.nodePorts) await this.releaseNodePort(p, uid);
  }

  /**
   * Removes allocations whose Service is gone (or is a newer one of the same name) and that
   * are older than `graceMs`: what a server that died between allocating and storing left.
   * And the other way round, records again what a stored Service holds but nothing records
   * (an IPAddress deleted by hand, Services stored before allocation existed), so the address
   * cannot be handed out twice. Returns what it did, as "released IP" / "recorded IP" and
   * "... nodePort N" strings, for the log.
   */
  async repair(graceMs = REPAIR_GRACE_MS, now = Date.now()): Promise<string[]> {
    const removed: string[] = [];
    for (const kv of await this.listAll('/registry/core/services/')) {
      const svc = JSON.parse(kv.value) as StoredObject;
      const held = heldBy(svc);
      const ip = held.ip !== undefined ? parseIPv4(held.ip) : undefined;
      if (
        held.ip &&
        ip !== undefined &&
        ip > this.cidr.base &&
        ip < this.cidr.base + this.cidr.size - 1 &&
        !(await this.ipTaken(held.ip)) &&
        (await this.claimIP(held.ip, svc))
      ) {
        removed.push(`recorded ${held.ip}`);
      }
      for (const p of held.nodePorts) {
        if (!(await this.store.get(NODE_PORT_PREFIX + p)) && (await this.claimNodePort(p, svc))) removed.push(`recorded nodePort ${p}`);
      }
    }
    const owner = async (namespace: string | undefined, name: string | undefined): Promise<string | undefined> => {
      if (!namespace || !name) return undefined;
      try {
        return (await this.writer.get(servicesInfo(), namespace, name)).metadata.uid;
      } catch (e) {
        if (e instanceof ApiError && e.code === 404) return undefined;
        throw e;
      }
    };
    for (const kv of await this.listAll('/registry/networking.k8s.io/ipaddresses/')) {
      const o = JSON.parse(kv.value) as StoredObject;
      const parent = (o.spec as { parentRef?: { group?: string; resource?: string; namespace?: string; name?: string } } | undefined)?.parentRef;
      if (parent?.resource !== 'services' || (parent.group ?? '') !== '') continue;
      if (now - Date.parse(o.metadata.creationTimestamp ?? '') < graceMs) continue;
      const uid = o.metadata.annotations?.[PARENT_UID];
      if ((await owner(parent.namespace, parent.name)) === uid && uid) continue;
      try {
        await this.writer.delete(refs.IPADDRESSES, undefined, o.metadata.name, { preconditions: { uid: o.metadata.uid } });
        removed.push(`released ${o.metadata.name}`);
      } catch (e) {
        if (!(e instanceof ApiError && (e.code === 404 || e.code === 409))) throw e;
      }
    }
    for (const kv of await this.listAll(NODE_PORT_PREFIX)) {
      const h = JSON.parse(kv.value) as NodePortHolder;
      if (now - Date.parse(h.at) < graceMs) continue;
      if ((await owner(h.namespace, h.name)) === h.uid) continue;
      try {
        await this.store.delete(kv.key, kv.modRevision);
        removed.push(`released nodePort ${kv.key.slice(NODE_PORT_PREFIX.length)}`);
      } catch (e) {
        if (!isStoreError(e, 'NotFound') && !isStoreError(e, 'Conflict')) throw e;
      }
    }
    return removed;
  }

  /** The NodePorts allocated now, with their Services (for tests). */
  async nodePorts(): Promise<Map<number, NodePortHolder>> {
    return new Map((await this.listAll(NODE_PORT_PREFIX)).map((kv) => [Number(kv.key.slice(NODE_PORT_PREFIX.length)), JSON.parse(kv.value) as NodePortHolder]));
  }

  private async listAll(prefix: string) {
    const out = [];
    let startAfter: string | undefined;
    for (;;) {
      const page = await this.store.list(prefix, { limit: 1000, startAfter });
      out.push(...page.items);
      if (!page.more || page.items.length === 0) return out;
      startAfter = page.items[page.items.length - 1].key;
    }
  }

  private async ipTaken(ip: string): Promise<boolean> {
    return !!(await this.store.get(`/registry/networking.k8s.io/ipaddresses/${ip}`));
  }

  /** Creates the IPAddress for `ip`; false when it exists (taken). */
  private async claimIP(ip: string, svc: StoredObject): Promise<boolean> {
    const ns = svc.metadata.namespace ?? 'default';
    try {
      await this.writer.create(refs.IPADDRESSES, undefined, {
        apiVersion: 'networking.k8s.io/v1',
        kind: 'IPAddress',
        metadata: {
          name: ip,
          labels: { [NETWORK_LABEL]: SERVICES_NETWORK },
          annotations: { [CIDR_ANNOTATION]: this.cidr.text, [PARENT_UID]: svc.metadata.uid ?? '' },
        },
        spec: { parentRef: { group: '', resource: 'services', namespace: ns, name: svc.metadata.name } },
      });
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.reason === 'AlreadyExists') return false;
      throw e;
    }
  }

  /**
   * A free address: the taken ones listed once, then create-and-retry (another server may take
   * the one picked first). Dynamic allocation starts in the upper part of the range, past a
   * lower band left for requested addresses (KEP-3070), so a well-known address such as a DNS
   * service's is rarely taken by chance; it wraps into the band when the rest is full.
   */
  private async claimFreeIP(svc: StoredObject): Promise<string | undefined> {
    const taken = new Set<number>();
    for (const kv of await this.listAll('/registry/networking.k8s.io/ipaddresses/')) {
      const n = parseIPv4(kv.key.slice(kv.key.lastIndexOf('/') + 1));
      if (n !== undefined) taken.add(n);
    }
    const hosts = this.cidr.size - 2;
    const band = Math.min(Math.max(16, Math.floor(this.cidr.size / 16)), 256);
    const upper = hosts > band * 2 ? band : 0;
    for (let attempt = 0; attempt < 32; attempt++) {
      const from = this.cidr.base + 1 + upper + Math.floor(Math.random() * (hosts - upper));
      const n = firstFree(this.cidr, (ip) => taken.has(ip), from);
      if (n === undefined) return undefined;
      const ip = formatIPv4(n);
      if (await this.claimIP(ip, svc)) return ip;
      taken.add(n);
    }
    return undefined;
  }

  private async releaseIP(ip: string, uid: string | undefined): Promise<void> {
    try {
      const o = await this.writer.get(refs.IPADDRESSES, undefined, ip);
      // Only the Service's own record: the address may already belong to someone else.
      if (o.metadata.annotations?.[PARENT_UID] !== uid || (o.spec as { parentRef?: { resource?: string } } | undefined)?.parentRef?.resource !== 'services')
        return;
      await this.writer.delete(refs.IPADDRESSES, undefined, ip, { preconditions: { uid: o.metadata.uid } });
    } catch (e) {
      if (!(e instanceof ApiError && (e.code === 404 || e.code === 409))) throw e;
    }
  }

  private async claimNodePort(port: number, svc: StoredObject): Promise<boolean> {
    const holder: NodePortHolder = {
      namespace: svc.metadata.namespace ?? 'default',
      name: svc.metadata.name,
      uid: svc.metadata.uid ?? '',
      at: new Date().toISOString(),
    };
    try {
      await this.store.create(NODE_PORT_PREFIX + port, JSON.stringify(holder));
      return true;
    } catch (e) {
      if (isStoreError(e, 'AlreadyExists')) return false;
      throw e;
    }
  }

  private async claimFreeNodePort(svc: StoredObject): Promise<number | undefined> {
    const taken = new Set((await this.listAll(NODE_PORT_PREFIX)).map((kv) => Number(kv.key.slice(NODE_PORT_PREFIX.length))));
    const size = NODE_PORT_RANGE.max - NODE_PORT_RANGE.min + 1;
    // A random start, so an unlucky race with another server does not repeat on every retry.
    let offset = Math.floor(Math.random() * size);
    for (let tried = 0; tried < size; tried++, offset = (offset + 1) % size) {
      const port = NODE_PORT_RANGE.min + offset;
      if (taken.has(port)) continue;
      if (await this.claimNodePort(port, svc)) return port;
      taken.add(port);
    }
    return undefined;
  }

  private async releaseNodePort(port: number, uid: string | undefined): Promise<void> {
    const kv = await this.store.get(NODE_PORT_PREFIX + port);
    if (!kv || (JSON.parse(kv.value) as NodePortHolder).uid !== uid) return;
    try {
      await this.store.delete(kv.key, kv.modRevision);
    } catch (e) {
      if (!isStoreError(e, 'NotFound') && !isStoreError(e, 'Conflict')) throw e;
    }
  }
}

/**
 * kube-apiserver's dropTypeDependentFields: when an update changes a Service's type so that it
 * no longer needs what the old type had (nodePorts off NodePort/LoadBalancer, the ClusterIP for
 * ExternalName), the values the client merely carried over are dropped, so `kubectl patch svc
 * -p '{"spec":{"type":"ClusterIP"}}'` works without the client clearing them. Values the client
 * changed are left for validation to judge. Runs before validation.
 */
export function dropTypeDependentFields(old: KubeObject, next: KubeObject): void {
  const o = (old.spec ?? {}) as Obj;
  const n = next.spec as Obj | undefined;
  if (!n || o.type === n.type) return;
  const needsNodePorts = (t: unknown) => t === 'NodePort' || t === 'LoadBalancer';
  if (needsNodePorts(o.type) && !needsNodePorts(n.type) && Array.isArray(n.ports)) {
    const was = new Map(((Array.isArray(o.ports) ? o.ports : []) as Obj[]).map((p) => [`${p.port}/${p.protocol ?? 'TCP'}`, p.nodePort]));
    for (const p of n.ports as Obj[]) {
      if (p && typeof p === 'object' && p.nodePort !== undefined && was.get(`${p.port}/${p.protocol ?? 'TCP'}`) === p.nodePort) delete p.nodePort;
    }
  }
  if (n.type === 'ExternalName' && o.type !== 'ExternalName') {
    if (n.clusterIP === o.clusterIP) delete n.clusterIP;
    if (JSON.stringify(n.clusterIPs) === JSON.stringify(o.clusterIPs)) delete n.clusterIPs;
    if (JSON.stringify(n.ipFamilies) === JSON.stringify(o.ipFamilies)) delete n.ipFamilies;
    if (n.ipFamilyPolicy === o.ipFamilyPolicy) delete n.ipFamilyPolicy;
  }
}

function firstString(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function causeOf(field: string, value: unknown, detail: string): FieldCause {
  return { reason: 'FieldValueInvalid', field, message: `Invalid value: ${JSON.stringify(value)}: ${detail}` };
}

/** What a stored Service holds: its ClusterIP (unless headless or none) and nodePorts. */
function heldBy(svc: KubeObject | undefined): Held {
  const spec = (svc?.spec ?? {}) as { clusterIP?: unknown; ports?: unknown; type?: unknown };
  const ip = typeof spec.clusterIP === 'string' && parseIPv4(spec.clusterIP) !== undefined ? spec.clusterIP : undefined;
  const nodePorts = new Set<number>();
  if (Array.isArray(spec.ports)) for (const p of spec.ports as Obj[]) if (typeof p?.nodePort === 'number') nodePorts.add(p.nodePort);
  return { ip, nodePorts };
}
