/**
 * The EndpointSlice controller, Kubernetes' for VMs: for every Service with a selector, the
 * EndpointSlices (discovery.k8s.io/v1) listing the VirtualMachineInstances its selector matches,
 * by their address on the pod network (status.interfaces[]), so the node data plane and DNS
 * know where a Service's traffic goes.
 *
 * - An endpoint is a VMI with an address on the interface of its `pod` network; a VMI without
 *   one yet, or in a final phase, is left out (Kubernetes leaves out pods without an IP).
 * - conditions: serving = the VMI's Ready condition is True; terminating = the VMI is being
 *   deleted; ready = serving and not terminating (or always, with publishNotReadyAddresses).
 * - ports: the Service's targetPort numbers. A named targetPort names a container port, and a
 *   VM has none, so such a port is left out and a Warning Event on the Service says so.
 * - Slices are named `<service>-<hash of its uid>[-<n>]`, at most 100 endpoints each, so a
 *   reconcile that races its own earlier write finds the slice by name instead of making a
 *   second one (Kubernetes needs its "expectations" for that, having random names).
 *
 * Lookups go through indexes, never the whole cache: Services and VMIs by selector/label pair
 * (`ns/key=value`), slices by their Service. Each reconcile writes only what differs from the
 * cached slices: one write per change.
 */
import { createHash } from 'node:crypto';
import { phaseOf, refs } from '@vessel/api';
import { isStatusError, type Client } from '@vessel/client';
import { cacheKey, Controller, EventRecorder, getCondition, splitKey, type Informer, type KubeObject, type Log } from '@vessel/runtime';

const { ENDPOINTSLICES, SERVICES, VMIS } = refs;

export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
export const MANAGED_BY_LABEL = 'endpointslice.kubernetes.io/managed-by';
export const MANAGED_BY = 'endpointslice-controller.vessel.io';
/** Kubernetes' --max-endpoints-per-slice default. */
const MAX_ENDPOINTS = 100;
const FINAL = new Set(['Succeeded', 'Failed']);
const BY_LABEL = 'label';
const BY_SERVICE = 'service';

type Obj = Record<string, unknown>;
type Labels = Record<string, string>;
interface ServicePort {
  name?: string;
  port?: number;
  targetPort?: number | string;
  protocol?: string;
}
interface SlicePort {
  name: string;
  port: number;
  protocol: string;
}
interface Endpoint {
  addresses: string[];
  conditions: { ready: boolean; serving: boolean; terminating: boolean };
  hostname?: string;
  nodeName?: string;
  targetRef: { kind: 'VirtualMachineInstance'; apiVersion: 'kubevirt.io/v1'; namespace: string; name: string; uid: string };
}

const selectorOf = (svc: KubeObject): Labels | undefined => {
  const spec = svc.spec as { selector?: Labels; type?: string } | undefined;
  // An empty or missing selector selects nothing here: such a Service's endpoints are its owner's
  // to write. An ExternalName Service is a DNS name and has no endpoints, whatever its selector.
  const s = spec?.type === 'ExternalName' ? undefined : spec?.selector;
  return s && Object.keys(s).length > 0 ? s : undefined;
};
const labelsOf = (o: KubeObject): Labels => (o.metadata.labels as Labels | undefined) ?? {};
const matches = (selector: Labels, labels: Labels) => Object.entries(selector).every(([k, v]) => labels[k] === v);
const pair = (ns: string | undefined, k: string, v: string) => `${ns}/${k}=${v}`;

export class EndpointSliceController extends Controller {
  private readonly services: Informer;
  private readonly vmis: Informer;
  private readonly slices: Informer;
  private readonly events: EventRecorder;
  /** Service key → the warning last recorded about its ports, so a repeat writes nothing. */
  private readonly warned = new Map<string, string>();

  constructor(client: Client, log?: Log) {
    super('endpointslice', client, log);
    this.events = new EventRecorder(client, 'endpointslice-controller');
    this.services = this.inform(SERVICES).addIndex(BY_LABEL, (s) => Object.entries(selectorOf(s) ?? {}).map(([k, v]) => pair(s.metadata.namespace, k, v)));
    // VMIs: a change concerns the Services that select it before and after (labels may change).
    this.vmis = this.inform(VMIS, () => []).addIndex(BY_LABEL, (v) => Object.entries(labelsOf(v)).map(([k, val]) => pair(v.metadata.namespace, k, val)));
    this.vmis.on({
      add: (v) => this.enqueueSelecting(v),
      update: (old, v) => {
        this.enqueueSelecting(old);
        this.enqueueSelecting(v);
      },
      delete: (v) => this.enqueueSelecting(v),
    });
    // A slice changed or deleted by someone else is put back.
    this.slices = this.inform(ENDPOINTSLICES, (s) => {
      const svc = labelsOf(s)[SERVICE_NAME_LABEL];
      return svc && labelsOf(s)[MANAGED_BY_LABEL] === MANAGED_BY ? [`${s.metadata.namespace}/${svc}`] : [];
    }).addIndex(BY_SERVICE, (s) => {
      const svc = labelsOf(s)[SERVICE_NAME_LABEL];
      return svc && labelsOf(s)[MANAGED_BY_LABEL] === MANAGED_BY ? [`${s.metadata.namespace}/${svc}`] : [];
    });
  }

  /** Enqueues the Services whose selector matches `vmi`'s labels: candidates by one label pair, then the whole selector. */
  private enqueueSelecting(vmi: KubeObject): void {
    const labels = labelsOf(vmi);
    const seen = new Set<string>();
    for (const [k, v] of Object.entries(labels)) {
      for (const svc of this.services.byIndex(BY_LABEL, pair(vmi.metadata.namespace, k, v))) {
        const key = cacheKey(svc);
        if (seen.has(key)) continue;
        seen.add(key);
        if (matches(selectorOf(svc)!, labels)) this.queue.add(key);
      }
    }
  }

  /** The VMIs `selector` matches in `ns`: those under its rarest label pair, then filtered. */
  private selected(ns: string, selector: Labels): KubeObject[] {
    let best: KubeObject[] | undefined;
    for (const [k, v] of Object.entries(selector)) {
      const bucket = this.vmis.byIndex(BY_LABEL, pair(ns, k, v));
      if (!best || bucket.length < best.length) best = bucket;
      if (best.length === 0) return [];
    }
    return (best ?? []).filter((v) => matches(selector, labelsOf(v)));
  }

  protected async reconcile(key: string): Promise<void> {
    const { namespace, name } = splitKey(key);
    const ns = namespace!;
    const svc = this.services.get(key);
    const existing = this.slices.byIndex(BY_SERVICE, key);
    const selector = svc && !svc.metadata.deletionTimestamp ? selectorOf(svc) : undefined;
    if (!svc || !selector) {
      // Gone, or no longer selecting: its slices go too (a deleted Service's would go with the garbage collector, later).
      for (const s of existing) await this.deleteSlice(s);
      this.warned.delete(key);
      return;
    }
    const spec = (svc.spec ?? {}) as { ports?: ServicePort[]; publishNotReadyAddresses?: boolean };
    const { ports, named } = slicePorts(spec.ports ?? []);
    await this.warnNamedPorts(key, svc, named);
    const endpoints = this.selected(ns, selector)
      .map((v) => endpointOf(v, name, spec.publishNotReadyAddresses === true))
      .filter((e): e is Endpoint => !!e)
      .sort((a, b) => a.targetRef.name.localeCompare(b.targetRef.name));
    const chunks: Endpoint[][] = [];
    for (let i = 0; i < endpoints.length; i += MAX_ENDPOINTS) chunks.push(endpoints.slice(i, i + MAX_ENDPOINTS));
    if (chunks.length === 0) chunks.push([]); // Kubernetes keeps one (empty) slice per Service
    const base = `${name.slice(0, 240)}-${createHash('sha256')
      .update(svc.metadata.uid ?? '')
      .digest('hex')
      .slice(0, 5)}`;
    const wanted = new Map(
      chunks.map((eps, i) => {
        const sliceName = i === 0 ? base : `${base}-${i}`;
        return [sliceName, desiredSlice(svc, sliceName, eps, ports)] as const;
      }),
    );
    for (const [sliceName, want] of wanted) {
      const have = existing.find((s) => s.metadata.name === sliceName) ?? this.slices.get(`${ns}/${sliceName}`);
      if (!have) await this.createSlice(want);
      else if (!sameSlice(have, want)) await this.updateSlice(have, want);
    }
    for (const s of existing) if (!wanted.has(s.metadata.name)) await this.deleteSlice(s);
  }

  private async warnNamedPorts(key: string, svc: KubeObject, named: string[]): Promise<void> {
    const message = named.length
      ? `targetPort ${named.map((n) => `"${n}"`).join(', ')} is a port name, which only a container can resolve; VMs have none, so the port is left out of the EndpointSlices: use the port number`
      : '';
    if ((this.warned.get(key) ?? '') === message) return;
    if (message) {
      this.warned.set(key, message);
      await this.events.record(svc, 'Warning', 'NamedTargetPortUnresolved', message);
    } else this.warned.delete(key);
  }

  private async createSlice(want: KubeObject): Promise<void> {
    try {
      await this.client.create(ENDPOINTSLICES, want, { namespace: want.metadata.namespace });
    } catch (e) {
      // Already there: the cache has not seen it yet; its event brings the Service back here.
      if (!isStatusError(e, 'AlreadyExists')) throw e;
    }
  }

  private async updateSlice(have: KubeObject, want: KubeObject): Promise<void> {
    try {
      await this.client.update(
        ENDPOINTSLICES,
        { ...want, metadata: { ...have.metadata, ...want.metadata, resourceVersion: have.metadata.resourceVersion } },
        { namespace: have.metadata.namespace },
      );
    } catch (e) {
      // A newer slice is on its way to the cache; its event runs this reconcile again.
      if (!isStatusError(e, 'Conflict') && !isStatusError(e, 'NotFound')) throw e;
    }
  }

  private async deleteSlice(s: KubeObject): Promise<void> {
    try {
      await this.client.delete(ENDPOINTSLICES, s.metadata.name, { namespace: s.metadata.namespace, preconditions: { uid: s.metadata.uid } });
    } catch (e) {
      if (!isStatusError(e, 'NotFound') && !isStatusError(e, 'Conflict')) throw e;
    }
  }
}

/** The Service's ports as a slice lists them, and the named targetPorts left out. */
function slicePorts(ports: ServicePort[]): { ports: SlicePort[]; named: string[] } {
  const out: SlicePort[] = [];
  const named: string[] = [];
  for (const p of ports) {
    const t = p.targetPort ?? p.port;
    const n = typeof t === 'number' ? t : typeof t === 'string' && /^\d+$/.test(t) ? Number(t) : undefined;
    if (n === undefined) {
      if (typeof t === 'string') named.push(t);
      continue;
    }
    out.push({ name: p.name ?? '', port: n, protocol: p.protocol ?? 'TCP' });
  }
  return { ports: out, named };
}

/** The address of a VMI's pod-network interface (KubeVirt reports the pod IP there for masquerade and bridge alike). */
export function podAddress(vmi: KubeObject): string | undefined {
  const networks = (vmi.spec as { networks?: { name?: string; pod?: unknown }[] } | undefined)?.networks ?? [];
  const podNet = networks.find((n) => n.pod !== undefined)?.name;
  if (!podNet) return undefined;
  const ifaces = (vmi.status as { interfaces?: { name?: string; ipAddress?: string }[] } | undefined)?.interfaces ?? [];
  const ip = ifaces.find((i) => i.name === podNet)?.ipAddress;
  return ip && /^\d+\.\d+\.\d+\.\d+$/.test(ip) ? ip : undefined;
}

function endpointOf(vmi: KubeObject, service: string, publishNotReady: boolean): Endpoint | undefined {
  if (FINAL.has(phaseOf(vmi))) return undefined;
  const address = podAddress(vmi);
  if (!address) return undefined;
  const terminating = !!vmi.metadata.deletionTimestamp;
  const serving = getCondition(vmi, 'Ready')?.status === 'True';
  const spec = (vmi.spec ?? {}) as { hostname?: string; subdomain?: string };
  const nodeName = (vmi.status as { nodeName?: string } | undefined)?.nodeName;
  return {
    addresses: [address],
    conditions: { ready: publishNotReady || (serving && !terminating), serving, terminating },
    // As for pods: the hostname is published when the VMI's subdomain is this Service.
    ...(spec.hostname && spec.subdomain === service ? { hostname: spec.hostname } : {}),
    ...(nodeName ? { nodeName } : {}),
    targetRef: {
      kind: 'VirtualMachineInstance',
      apiVersion: 'kubevirt.io/v1',
      namespace: vmi.metadata.namespace!,
      name: vmi.metadata.name,
      uid: vmi.metadata.uid ?? '',
    },
  };
}

function desiredSlice(svc: KubeObject, name: string, endpoints: Endpoint[], ports: SlicePort[]): KubeObject {
  const { [SERVICE_NAME_LABEL]: _s, [MANAGED_BY_LABEL]: _m, ...svcLabels } = labelsOf(svc);
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name,
      namespace: svc.metadata.namespace,
      // The Service's labels, as Kubernetes copies them, under the two that say whose slice this is.
      labels: { ...svcLabels, [SERVICE_NAME_LABEL]: svc.metadata.name, [MANAGED_BY_LABEL]: MANAGED_BY },
      ownerReferences: [
        { apiVersion: 'v1', kind: 'Service', name: svc.metadata.name, uid: svc.metadata.uid ?? '', controller: true, blockOwnerDeletion: true },
      ],
    },
    addressType: 'IPv4',
    endpoints,
    ports,
  } as KubeObject;
}

function sameSlice(have: KubeObject, want: KubeObject): boolean {
  const pick = (o: KubeObject) => {
    const b = o as KubeObject & Obj;
    return JSON.stringify([o.metadata.labels ?? {}, o.metadata.ownerReferences ?? [], b.addressType, b.endpoints ?? [], b.ports ?? []], sortKeys);
  };
  return pick(have) === pick(want);
}

/** JSON.stringify replacer: objects with sorted keys, so key order never counts as a change. */
function sortKeys(_k: string, v: unknown): unknown {
  if (v && typeof v === 'object' && !Array.isArray(v)) return Object.fromEntries(Object.entries(v as Obj).sort(([a], [b]) => a.localeCompare(b)));
  return v;
}
