/**
 * The IPAM contract of the cluster network (docs/network.md, "IPAM"): the keys an allocation
 * (an IPAddress named by the address) carries, which interface of a VM is on the cluster
 * network, and the fixed-address annotation with its checks. The controller, admission and the
 * node agents all read these, so the keys live here once.
 */
import { invalid } from './errors.ts';
import { CIDR_PROBLEM, isHostOf, parseCidr, parseIPv4, type Cidr } from './ip.ts';
import type { FieldCause } from './types.ts';

export const DEFAULT_VM_NETWORK_CIDR = '10.244.0.0/16';

/** A vmNetworkCidr option that is not a usable range (code `InvalidVmNetworkCidr`): the server and controllers refuse to start. */
export class VmNetworkCidrError extends Error {
  readonly code = 'InvalidVmNetworkCidr';
  constructor(readonly value: string) {
    super(`invalid VM network CIDR "${value}": ${CIDR_PROBLEM}`);
    this.name = 'VmNetworkCidrError';
  }
}

/** The VM network of a vmNetworkCidr option (default 10.244.0.0/16); throws VmNetworkCidrError. */
export function vmNetwork(text: string = DEFAULT_VM_NETWORK_CIDR): Cidr {
  const cidr = parseCidr(text);
  if (!cidr) throw new VmNetworkCidrError(text);
  return cidr;
}

/** A user option (not reserved: a subdomain of vessel.io) on a VM template or a standalone VMI: the address to hold. */
export const FIXED_IP = 'ipam.vessel.io/ip';

/** Labels of an allocation: the network (`cluster`; `services` for ClusterIPs) and a VM's interface name. */
export const NETWORK_LABEL = 'vessel.io/network';
export const INTERFACE_LABEL = 'vessel.io/interface';
export const CLUSTER_NETWORK = 'cluster';

/** Annotations of an allocation: the range it came from, a VM NIC's MAC, and the parent's uid (a re-created parent is another parent). */
export const CIDR_ANNOTATION = 'vessel.io/cidr';
export const MAC_ANNOTATION = 'vessel.io/mac';
export const PARENT_UID_ANNOTATION = 'vessel.io/parent-uid';

/** An IPAddress's spec.parentRef. */
export interface ParentRef {
  group: string;
  resource: string;
  namespace?: string;
  name: string;
}

/** "resource/namespace/name" (cluster-scoped: "resource/name"): one key per parent, for indexes and work queues. */
export function parentKey(p: ParentRef): string {
  return p.namespace ? `${p.resource}/${p.namespace}/${p.name}` : `${p.resource}/${p.name}`;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const list = (v: unknown): Obj[] => (Array.isArray(v) ? v.filter(isObj) : []);

/** A VM NIC on the cluster network: the interface's name and the MAC it asks for, if any. */
export interface PodInterface {
  name: string;
  macAddress?: string;
}

/**
 * The interface of a VMI spec (or VM template spec) on the `pod` network, matched by name, as
 * KubeVirt allows one. A spec with neither interfaces nor networks gets KubeVirt's default pod
 * interface `default` when its VMI is made (autoattachPodInterface, defaults.ts), so it counts
 * as one: the address must be ready before the VMI exists.
 */
export function podInterface(spec: unknown): PodInterface | undefined {
  if (!isObj(spec)) return undefined;
  const devices = isObj(spec.domain) && isObj(spec.domain.devices) ? spec.domain.devices : {};
  const interfaces = list(devices.interfaces);
  const networks = list(spec.networks);
  if (interfaces.length === 0 && networks.length === 0) return devices.autoattachPodInterface === false ? undefined : { name: 'default' };
  const pod = networks.find((n) => isObj(n.pod) && typeof n.name === 'string');
  const itf = pod && interfaces.find((i) => i.name === pod.name);
  if (!itf) return undefined;
  return { name: String(itf.name), ...(typeof itf.macAddress === 'string' && itf.macAddress ? { macAddress: itf.macAddress.toLowerCase() } : {}) };
}

/**
 * Why `value` cannot be a fixed address in `cidr`, as a field cause; undefined when it can.
 * Whether another parent holds it is the caller's question (it needs the IPAddresses).
 */
export function fixedIpProblem(field: string, value: string, cidr: Cidr): FieldCause | undefined {
  const ip = parseIPv4(value);
  if (ip === undefined) return invalid(field, value, 'must be an IPv4 address in canonical form, such as 10.244.0.5');
  if (ip < cidr.base || ip >= cidr.base + cidr.size) return invalid(field, value, `must be in the VM network ${cidr.text}`);
  if (!isHostOf(cidr, ip))
    return invalid(field, value, `is the ${ip === cidr.base ? 'network' : 'broadcast'} address of the VM network ${cidr.text}: pick a host address`);
  return undefined;
}

/** Where the fixed address is asked for: a VM's template annotations, a VMI's own. */
export function fixedIpField(kind: 'VirtualMachine' | 'VirtualMachineInstance'): string {
  return kind === 'VirtualMachine' ? `spec.template.metadata.annotations[${FIXED_IP}]` : `metadata.annotations[${FIXED_IP}]`;
}

/** The fixed address a VM (template annotation) or VMI (its own annotation) asks for. */
export function fixedIpOf(kind: 'VirtualMachine' | 'VirtualMachineInstance', obj: { metadata?: unknown; spec?: unknown }): string | undefined {
  const meta = kind === 'VirtualMachine' ? (isObj(obj.spec) && isObj(obj.spec.template) ? obj.spec.template.metadata : undefined) : obj.metadata;
  const v = isObj(meta) && isObj(meta.annotations) ? meta.annotations[FIXED_IP] : undefined;
  return typeof v === 'string' ? v : undefined;
}

/**
 * The parent whose allocation a VMI's pod interface uses: its VM (the controller owner) when it
 * has one, else the VMI itself. What an agent looks up (by parent and `vessel.io/parent-uid`)
 * before it launches a VMI.
 */
export function vmiParent(vmi: {
  metadata?: { name?: string; namespace?: string; uid?: string; ownerReferences?: { kind: string; name: string; uid: string; controller?: boolean }[] };
}): ParentRef & { uid: string } {
  const meta = vmi.metadata ?? {};
  const vm = (meta.ownerReferences ?? []).find((r) => r.kind === 'VirtualMachine' && r.controller);
  return vm
    ? { group: 'kubevirt.io', resource: 'virtualmachines', namespace: meta.namespace, name: vm.name, uid: vm.uid }
    : { group: 'kubevirt.io', resource: 'virtualmachineinstances', namespace: meta.namespace, name: meta.name ?? '', uid: meta.uid ?? '' };
}
