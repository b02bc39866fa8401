/**
 * IPAM for the cluster network (docs/network.md, "IPAM"). Every parent that needs an address
 * on the VM network holds exactly one IPAddress (networking.k8s.io/v1, cluster-scoped, named by
 * the address):
 *  - a VirtualMachine whose template has an interface on the `pod` network, from the moment it
 *    is created (the address is ready before it first starts) until it is deleted; stop/start
 *    and rescheduling do not touch it, since the VM, not its VMI, is the parent;
 *  - a VirtualMachineInstance with no VM owner and such an interface, for its lifetime;
 *  - every Node: its gateway address on the VM network.
 * Creating the IPAddress is the allocation: the store refuses a second object of one name, so
 * two allocators never hand out one address; a 409 means taken, and the next free one is tried.
 *
 * A fixed address (annotation `ipam.vessel.io/ip` on the VM template, or a standalone VMI) is
 * taken exactly: when someone else holds it, the parent gets a Warning Event and the condition
 * AddressAllocated=False (reason AddressConflict) and no other address. Changing the annotation
 * moves the allocation: the new address is taken first, then the old one released, so a move
 * that loses a race leaves the VM its old address (and says why). Removing it keeps the address.
 *
 * Allocations whose parent is gone, or is another incarnation (the parent-uid annotation differs:
 * a VM deleted and re-created under the same name), are released: on the parent's delete event,
 * at start (the first list), and at every resync.
 */
import { firstFree, formatIPv4, ipam, macForIPv4, parseIPv4, refs, type Cidr, type KubeObject as ApiObject } from '@vessel/api';
import { isStatusError, type Client } from '@vessel/client';
import { cacheKey, Controller, EventRecorder, getCondition, setCondition, updateStatus, type Informer, type KubeObject, type Log } from '@vessel/runtime';

const { IPADDRESSES, NODES, VMIS, VMS } = refs;
const { CIDR_ANNOTATION, CLUSTER_NETWORK, INTERFACE_LABEL, MAC_ANNOTATION, NETWORK_LABEL, PARENT_UID_ANNOTATION } = ipam;

/** The condition on a VM (or standalone VMI) while it cannot have its address; removed once it has it. */
export const ADDRESS_CONDITION = 'AddressAllocated';
/** Stable reasons, of the condition and of Events. */
export const IpamReason = {
  Allocated: 'AddressAllocated',
  Released: 'AddressReleased',
  Conflict: 'AddressConflict',
  RangeFull: 'AddressRangeFull',
  FixedInvalid: 'FixedAddressInvalid',
} as const;

const BY_PARENT = 'parent';
/** Creates tried per reconcile before it gives up for now (each 409 is someone else's fresh allocation). */
const MAX_TRIES = 32;

type Obj = Record<string, unknown>;
type Problem = { reason: string; message: string };

/** What a parent should hold: nothing (undefined) or one address with these properties. */
interface Want {
  ref: ipam.ParentRef;
  obj: KubeObject;
  uid: string;
  /** A VM NIC (its name and MAC); absent for a node's gateway. */
  iface?: ipam.PodInterface;
  fixed?: string;
  fixedField?: string;
}

export interface IpamOptions {
  /** The VM network (default 10.244.0.0/16). */
  cidr?: string;
  /** How often every allocation is checked against its parent again (default 5 min). */
  resyncMs?: number;
}

const annotationsOf = (o: KubeObject) => (o.metadata.annotations ?? {}) as Record<string, string>;
const labelsOf = (o: KubeObject) => (o.metadata.labels ?? {}) as Record<string, string>;
const parentRefOf = (a: ApiObject) => ((a.spec as Obj | undefined)?.parentRef ?? {}) as Partial<ipam.ParentRef>;

const MANAGED: Record<string, string> = { virtualmachines: 'kubevirt.io', virtualmachineinstances: 'kubevirt.io', nodes: '' };

/** The parent key of an allocation this controller manages (cluster network, a VM, VMI or Node parent). */
function byParent(a: KubeObject): string[] {
  const p = parentRefOf(a);
  if (labelsOf(a)[NETWORK_LABEL] !== CLUSTER_NETWORK || !p.resource || !p.name || MANAGED[p.resource] !== (p.group ?? '')) return [];
  return [ipam.parentKey(p as ipam.ParentRef)];
}

/** Who holds an address, as the parent's status may say it: a tenant's VM learns nothing of another namespace. */
function holderOf(p: Partial<ipam.ParentRef>, namespace: string | undefined): string {
  if (!p.resource || !p.name) return 'another parent';
  if (p.resource === 'nodes') return `the gateway of node ${p.name}`;
  return p.namespace === namespace ? ipam.parentKey(p as ipam.ParentRef) : 'a parent in another namespace';
}

const ownedByVm = (o: KubeObject) => (o.metadata.ownerReferences ?? []).some((r) => r.kind === 'VirtualMachine' && r.controller);

/**
 * How many host addresses at the start of the range dynamic allocation leaves for fixed ones
 * until the rest is full (Kubernetes' ClusterIP allocator, KEP-3070: min(max(16, size/16), 256));
 * none in ranges under 64 addresses, which are too small to split.
 */
export function staticBand(cidr: Cidr): number {
  return cidr.size < 64 ? 0 : Math.min(Math.max(16, cidr.size / 16), 256);
}

/** Parses a vmNetworkCidr option; throws (code InvalidVmNetworkCidr) with the rule when it is not a usable range. */
export const vmNetworkCidr = (text?: string): Cidr => ipam.vmNetwork(text);

export class IpamController extends Controller {
  private readonly cidr: Cidr;
  private readonly vms: Informer;
  private readonly vmis: Informer;
  private readonly nodes: Informer;
  private readonly addresses: Informer;
  private readonly events: EventRecorder;
  private readonly resyncMs: number;
  private resyncTimer?: NodeJS.Timeout;
  /** Where the next search for a free address starts, so an address just released is not handed out again at once. */
  private next: number;
  /** The first address of the dynamic band: below it, the static band fixed addresses are best picked from. */
  private readonly dynamic: number;
  /** Parent key → the IPAddress this controller created for it, until the cache has it (a reconcile may run before). */
  private readonly created = new Map<string, KubeObject>();
  /** Parent key → the address it waits for ('' = any: the range was full), so a release wakes it. */
  private readonly waiting = new Map<string, string>();
  /** Parent key → the problem last reported for it, so a repeat is not another Event. */
  private readonly reported = new Map<string, string>();

  constructor(client: Client, log?: Log, opts: IpamOptions = {}) {
    super('ipam', client, log);
    this.cidr = vmNetworkCidr(opts.cidr);
    this.dynamic = this.cidr.base + 1 + staticBand(this.cidr);
    this.next = this.dynamic;
    this.resyncMs = opts.resyncMs ?? 300_000;
    this.events = new EventRecorder(client, 'ipam-controller');
    this.vms = this.inform(VMS, (vm) => [`virtualmachines/${cacheKey(vm)}`]);
    // A VM's VMI is not a parent (its VM is), unless it holds an address from before it had an owner.
    this.vmis = this.inform(VMIS, (vmi) => {
      const key = `virtualmachineinstances/${cacheKey(vmi)}`;
      return ownedByVm(vmi) && this.addresses.byIndex(BY_PARENT, key).length === 0 ? [] : [key];
    });
    this.nodes = this.inform(NODES, (n) => [`nodes/${n.metadata.name}`]);
    this.addresses = this.inform(IPADDRESSES, (a) => this.keysOfAddress(a)).addIndex(BY_PARENT, byParent);
  }

  /** The address's parent, and the parents waiting for this address (or any). */
  private keysOfAddress(a: KubeObject): string[] {
    const keys = byParent(a);
    for (const [key, want] of this.waiting) if (want === '' || want === a.metadata.name) keys.push(key);
    return keys;
  }

  protected override async started(): Promise<void> {
    // The first list already queued every allocation's parent; this repeats it, in case a
    // delete was missed while no controller ran (another leader's term, a crash).
    this.resyncTimer = setInterval(() => this.resync(), this.resyncMs);
    this.resyncTimer.unref();
  }

  protected override async stopped(): Promise<void> {
    clearInterval(this.resyncTimer);
  }

  /** Every allocation's parent and every possible parent again: reconciles that find all in order write nothing. */
  private resync(): void {
    for (const a of this.addresses.list()) for (const k of byParent(a)) this.queue.add(k);
    for (const vm of this.vms.list()) this.queue.add(`virtualmachines/${cacheKey(vm)}`);
    for (const vmi of this.vmis.list()) if (!ownedByVm(vmi)) this.queue.add(`virtualmachineinstances/${cacheKey(vmi)}`);
    for (const node of this.nodes.list()) this.queue.add(`nodes/${node.metadata.name}`);
  }

  /** What the parent behind `key` should hold, from the caches; undefined: nothing. */
  private wanted(key: string): Want | undefined {
    const [resource, ...rest] = key.split('/');
    if (resource === 'nodes') {
      const node = this.nodes.get(rest[0]);
      return node && { ref: { group: '', resource, name: rest[0] }, obj: node, uid: node.metadata.uid ?? '' };
    }
    const [namespace, name] = rest;
    if (resource === 'virtualmachines') {
      const vm = this.vms.get(`${namespace}/${name}`);
      const template = (vm?.spec as Obj | undefined)?.template as Obj | undefined;
      const iface = ipam.podInterface(template?.spec);
      if (!vm || !iface) return undefined;
      return {
        ref: { group: 'kubevirt.io', resource, namespace, name },
        obj: vm,
        uid: vm.metadata.uid ?? '',
        iface,
        fixed: ipam.fixedIpOf('VirtualMachine', vm),
        fixedField: ipam.fixedIpField('VirtualMachine'),
      };
    }
    if (resource === 'virtualmachineinstances') {
      const vmi = this.vmis.get(`${namespace}/${name}`);
      const iface = vmi && !ownedByVm(vmi) ? ipam.podInterface(vmi.spec) : undefined;
      if (!vmi || !iface) return undefined;
      return {
        ref: { group: 'kubevirt.io', resource, namespace, name },
        obj: vmi,
        uid: vmi.metadata.uid ?? '',
        iface,
        fixed: ipam.fixedIpOf('VirtualMachineInstance', vmi),
        fixedField: ipam.fixedIpField('VirtualMachineInstance'),
      };
    }
    return undefined;
  }

  protected async reconcile(key: string): Promise<void> {
    const want = this.wanted(key);
    let held = this.addresses.byIndex(BY_PARENT, key);
    const recent = this.created.get(key);
    if (recent) {
      if (held.some((a) => a.metadata.uid === recent.metadata.uid)) this.created.delete(key);
      else if (await this.stillExists(recent)) held = [...held, recent];
      else this.created.delete(key);
    }
    if (!want) {
      this.waiting.delete(key);
      this.reported.delete(key);
      for (const a of held) await this.release(a);
      this.created.delete(key);
      return;
    }
    // Another incarnation's address, or one outside the range (the range was changed): released first.
    const current = held.filter((a) => annotationsOf(a)[PARENT_UID_ANNOTATION] === want.uid && this.inRange(a.metadata.name));
    for (const a of held) if (!current.includes(a)) await this.release(a);
    current.sort(
      (a, b) => String(a.metadata.creationTimestamp).localeCompare(String(b.metadata.creationTimestamp)) || a.metadata.name.localeCompare(b.metadata.name),
    );

    const mine = want.fixed !== undefined ? current.find((a) => a.metadata.name === want.fixed) : current[0];
    if (mine) {
      this.waiting.delete(key);
      for (const a of current) if (a !== mine) await this.release(a, want);
      await this.refresh(mine, want);
      return this.report(key, want, undefined);
    }
    const problem = want.fixed !== undefined ? await this.takeFixed(key, want) : await this.takeAny(key, want);
    if (!problem) {
      this.waiting.delete(key);
      // A move: the new address is taken, the old one goes.
      for (const a of current) await this.release(a, want);
    }
    await this.report(key, want, problem);
  }

  private async takeFixed(key: string, want: Want): Promise<Problem | undefined> {
    const field = want.fixedField!;
    const cause = ipam.fixedIpProblem(field, want.fixed!, this.cidr);
    if (cause) {
      // Admission refuses these; this one was stored before (or under another range).
      this.waiting.delete(key);
      return { reason: IpamReason.FixedInvalid, message: `${field}: ${cause.message}` };
    }
    const ip = parseIPv4(want.fixed!)!;
    if (await this.create(key, ip, want)) return undefined;
    this.waiting.set(key, want.fixed!);
    // Only for the message: the cache may not have the holder yet, and a failed read just leaves it unnamed.
    const holder: ApiObject | undefined = this.addresses.get(want.fixed!) ?? (await this.client.get(IPADDRESSES, want.fixed!).catch(() => undefined));
    const by = holder ? ` by ${holderOf(parentRefOf(holder), want.ref.namespace)}` : '';
    return {
      reason: IpamReason.Conflict,
      message: `the fixed address ${want.fixed} (${field}) is already held${by}: it is not replaced by another; it is taken once released`,
    };
  }

  private async takeAny(key: string, want: Want): Promise<Problem | undefined> {
    const tried = new Set<number>();
    const taken = (ip: number) => tried.has(ip) || this.addresses.get(formatIPv4(ip)) !== undefined || this.isCreated(ip);
    for (let i = 0; i < MAX_TRIES; i++) {
      const ip = firstFree(this.cidr, taken, this.next);
      if (ip === undefined) {
        this.waiting.set(key, '');
        return {
          reason: IpamReason.RangeFull,
          message: `no free address in the VM network ${this.cidr.text} (${this.cidr.size - 2} host addresses, all held): delete VMs, or start the server with a larger --vm-network-cidr`,
        };
      }
      this.next = ip + 1 >= this.cidr.base + this.cidr.size - 1 ? this.dynamic : ip + 1;
      if (await this.create(key, ip, want)) return undefined;
      tried.add(ip);
    }
    throw new Error(`ipam: ${key}: ${MAX_TRIES} addresses in a row were taken by others meanwhile; trying again`);
  }

  private isCreated(ip: number): boolean {
    const name = formatIPv4(ip);
    for (const a of this.created.values()) if (a.metadata.name === name) return true;
    return false;
  }

  /** Creates the allocation; false when the address is taken (409). */
  private async create(key: string, ip: number, want: Want): Promise<boolean> {
    const name = formatIPv4(ip);
    const { labels, annotations } = this.metadataFor(name, want);
    try {
      const a = await this.client.create(IPADDRESSES, {
        apiVersion: 'networking.k8s.io/v1',
        kind: 'IPAddress',
        metadata: { name, labels, annotations },
        spec: { parentRef: want.ref },
      });
      this.created.set(key, a as KubeObject);
    } catch (e) {
      if (isStatusError(e, 'AlreadyExists')) return false;
      throw e;
    }
    const what = want.iface ? `interface ${want.iface.name} (MAC ${annotations[MAC_ANNOTATION]})` : "the node's gateway on the VM network";
    this.log(`ipam: ${ipam.parentKey(want.ref)}: ${name} for ${what}`);
    await this.events.record(want.obj, 'Normal', IpamReason.Allocated, `Allocated ${name} in ${this.cidr.text} to ${what}`);
    return true;
  }

  private metadataFor(name: string, want: Want): { labels: Record<string, string>; annotations: Record<string, string> } {
    const labels: Record<string, string> = { [NETWORK_LABEL]: CLUSTER_NETWORK };
    const annotations: Record<string, string> = { [CIDR_ANNOTATION]: this.cidr.text, [PARENT_UID_ANNOTATION]: want.uid };
    if (want.iface) {
      labels[INTERFACE_LABEL] = want.iface.name;
      annotations[MAC_ANNOTATION] = want.iface.macAddress ?? macForIPv4(parseIPv4(name)!);
    }
    return { labels, annotations };
  }

  /** Keeps a held allocation's labels and annotations in step with its parent (an interface renamed, a MAC set). */
  private async refresh(a: KubeObject, want: Want): Promise<void> {
    const { labels, annotations } = this.metadataFor(a.metadata.name, want);
    const stale = (have: Record<string, string>, need: Record<string, string>) => Object.entries(need).some(([k, v]) => have[k] !== v);
    if (!stale(labelsOf(a), labels) && !stale(annotationsOf(a), annotations)) return;
    try {
      await this.client.patch(IPADDRESSES, a.metadata.name, { metadata: { labels, annotations } });
    } catch (e) {
      // Deleted meanwhile: its delete event brings the parent back here for a new one.
      if (!isStatusError(e, 'NotFound')) throw e;
    }
  }

  /** Deletes an allocation (that incarnation only); `want`: the parent keeps living, so it hears of it. */
  private async release(a: KubeObject, want?: Want): Promise<void> {
    try {
      await this.client.delete(IPADDRESSES, a.metadata.name, { preconditions: { uid: a.metadata.uid } });
    } catch (e) {
      // Already gone, or the name is someone else's now: nothing of ours to release.
      if (isStatusError(e, 'NotFound') || isStatusError(e, 'Conflict')) return;
      throw e;
    }
    this.log(`ipam: released ${a.metadata.name} (${byParent(a)[0] ?? 'unmanaged'})`);
    if (want) await this.events.record(want.obj, 'Normal', IpamReason.Released, `Released ${a.metadata.name}`);
  }

  private async stillExists(a: KubeObject): Promise<boolean> {
    try {
      return (await this.client.get(IPADDRESSES, a.metadata.name)).metadata?.uid === a.metadata.uid;
    } catch (e) {
      if (isStatusError(e, 'NotFound')) return false;
      throw e;
    }
  }

  private inRange(name: string): boolean {
    const ip = parseIPv4(name);
    return ip !== undefined && ip > this.cidr.base && ip < this.cidr.base + this.cidr.size - 1;
  }

  /**
   * Says why a VM (or standalone VMI) has no address: a Warning Event and the condition
   * AddressAllocated=False, written only when it changes; removed once it has one. Nodes get
   * the Event only (their status is their agent's).
   */
  private async report(key: string, want: Want, problem: Problem | undefined): Promise<void> {
    const said = problem ? `${want.uid}\n${problem.reason}\n${problem.message}` : undefined;
    if (said !== this.reported.get(key)) {
      if (said === undefined) this.reported.delete(key);
      else {
        this.reported.set(key, said);
        this.log(`ipam: ${key}: ${problem!.message}`);
        await this.events.record(want.obj, 'Warning', problem!.reason, problem!.message);
      }
    }
    if (want.ref.resource === 'nodes') return;
    const cond = getCondition(want.obj, ADDRESS_CONDITION);
    if (!problem ? !cond : cond?.reason === problem.reason && cond.message === problem.message) return;
    const res = want.ref.resource === 'virtualmachines' ? VMS : VMIS;
    await updateStatus(this.client, res, want.ref.namespace, want.ref.name, (s, current) => {
      if (current.metadata?.uid !== want.uid) return false;
      if (problem) return setCondition(s, { type: ADDRESS_CONDITION, status: 'False', reason: problem.reason, message: problem.message }, false);
      if (!Array.isArray(s.conditions)) return false;
      s.conditions = (s.conditions as Obj[]).filter((c) => c.type !== ADDRESS_CONDITION);
    });
  }
}
