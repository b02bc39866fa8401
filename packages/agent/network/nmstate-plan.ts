/**
 * The pure half of node network configuration (docs/network.md, "Node network configuration"):
 * the node's interfaces read from `ip -j -d link` / `ip -j addr`, the `ip` commands that take
 * them to a policy's desired state in dependency order, the desired state that takes them back
 * to a snapshot, and the conditions of enactments and policies, as kubernetes-nmstate words
 * them. No I/O here, so every rule is unit-tested.
 */
import { nmstate, parseIPv4 } from '@vessel/api';

export type CurrentInterface = nmstate.CurrentInterface;
export type DesiredInterface = nmstate.DesiredInterface;

/**
 * How a `vlan` interface is made. `kernel`: an 802.1Q device (`type vlan`). `vxlan`: where the
 * kernel has no 8021q (this dev machine's), a stand-in that gives the same thing between the
 * nodes of one segment: a VXLAN device on the base interface, VNI VLAN_VNI_BASE + id, flooded to
 * a multicast group of that id on the base, TTL 1. Marked with the alias `vessel-vlan:BASE:ID`
 * so it reads back as that vlan. Not 802.1Q on the wire: a real switch's VLAN does not see it.
 */
export type VlanMode = 'kernel' | 'vxlan';
export const VLAN_VNI_BASE = 0x100000;
const VLAN_ALIAS = /^vessel-vlan:([A-Za-z0-9_.-]{1,15}):(\d{1,4})$/;
export const vlanGroup = (id: number): string => `239.1.${id >> 8}.${id & 255}`;

/** One command: `ip ARGS` or `bridge ARGS` in the node's namespace. */
export interface Step {
  tool: 'ip' | 'bridge';
  args: string[];
}

/** A desired state that cannot be applied on this node: the field and why; nothing was run. */
export class PlanError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = 'PlanError';
  }
}

interface IpLink {
  ifname: string;
  flags?: string[];
  mtu?: number;
  address?: string;
  link_type?: string;
  master?: string;
  link?: string;
  ifalias?: string;
  linkinfo?: { info_kind?: string; info_data?: { id?: number; stp_state?: number; link?: string } };
}
interface IpAddr {
  ifname: string;
  addr_info?: { family?: string; local?: string; prefixlen?: number }[];
}

/** nmstate's type name of a link. */
function typeOf(l: IpLink): string {
  const kind = l.linkinfo?.info_kind;
  if (kind === 'bridge') return 'linux-bridge';
  if (kind === 'vlan') return 'vlan';
  if (kind === 'vxlan' && l.ifalias && VLAN_ALIAS.test(l.ifalias)) return 'vlan';
  if (kind) return kind; // veth, vxlan, tun, macvlan, dummy, ...
  if (l.link_type === 'loopback') return 'loopback';
  return l.link_type === 'ether' ? 'ethernet' : 'unknown';
}

/** The interfaces of `ip -j -d link show` and `ip -j addr show` (their stdout), sorted by name. */
export function parseInterfaces(linkJson: string, addrJson: string): CurrentInterface[] {
  const links = JSON.parse(linkJson || '[]') as IpLink[];
  const addrs = new Map((JSON.parse(addrJson || '[]') as IpAddr[]).map((a) => [a.ifname, a.addr_info ?? []]));
  const out = links.map((l): CurrentInterface => {
    const v4 = (addrs.get(l.ifname) ?? [])
      .filter((a) => a.family === 'inet' && typeof a.local === 'string' && typeof a.prefixlen === 'number')
      .map((a) => ({ ip: a.local!, 'prefix-length': a.prefixlen! }));
    const type = typeOf(l);
    const i: CurrentInterface = {
      name: l.ifname,
      type,
      state: (l.flags ?? []).includes('UP') ? 'up' : 'down',
      ...(l.address && l.link_type === 'ether' ? { 'mac-address': l.address.toUpperCase() } : {}),
      ...(l.mtu !== undefined ? { mtu: l.mtu } : {}),
      ipv4: { enabled: v4.length > 0, address: v4 },
      ...(l.master ? { controller: l.master } : {}),
    };
    if (type === 'linux-bridge') i.bridge = { options: { stp: { enabled: (l.linkinfo?.info_data?.stp_state ?? 0) !== 0 } }, port: [] };
    if (type === 'vlan') {
      const m = l.linkinfo?.info_kind === 'vxlan' ? VLAN_ALIAS.exec(l.ifalias ?? '') : null;
      if (m) i.vlan = { 'base-iface': m[1], id: Number(m[2]) };
      else if (l.link !== undefined && l.linkinfo?.info_data?.id !== undefined) i.vlan = { 'base-iface': l.link, id: l.linkinfo.info_data.id };
    }
    return i;
  });
  const byName = new Map(out.map((i) => [i.name, i]));
  for (const i of out) if (i.controller) byName.get(i.controller)?.bridge?.port.push({ name: i.name });
  for (const i of out) i.bridge?.port.sort((a, b) => a.name.localeCompare(b.name));
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

const FIELD = (i: number) => `spec.desiredState.interfaces[${i}]`;
const isVirtual = (t: string | undefined) => t === 'linux-bridge' || t === 'vlan';

/** The commands that create vlan `name` on `base` with `id`. */
function vlanCreate(name: string, base: string, id: number, mode: VlanMode): Step[] {
  if (mode === 'kernel') return [{ tool: 'ip', args: ['link', 'add', 'link', base, 'name', name, 'type', 'vlan', 'id', String(id)] }];
  return [
    {
      tool: 'ip',
      args: ['link', 'add', name, 'type', 'vxlan', 'id', String(VLAN_VNI_BASE + id), 'group', vlanGroup(id), 'dev', base, 'dstport', '4789', 'ttl', '1'],
    },
    { tool: 'ip', args: ['link', 'set', 'dev', name, 'alias', `vessel-vlan:${base}:${id}`] },
  ];
}

/**
 * The commands that take `current` to `desired`, in dependency order: removals, bridges, vlans
 * (a base before what is built on it), MTUs, bridge ports, addresses, and links up (ports before
 * their bridge). Throws PlanError, before anything would run, for what this node cannot do:
 * a port or vlan base that neither exists nor is made by the policy, an ethernet interface that
 * does not exist, a name taken by an interface of another type.
 */
export function planApply(desired: readonly DesiredInterface[], current: readonly CurrentInterface[], mode: VlanMode): Step[] {
  const cur = new Map(current.map((c) => [c.name, c]));
  const want = new Map(desired.map((d, i) => [d.name, { d, i }]));
  const absent = desired.filter((d) => d.state === 'absent');
  const present = desired.map((d, i) => ({ d, i })).filter(({ d }) => d.state !== 'absent');
  // What exists once removals and creations are done.
  const willExist = (name: string) => (cur.has(name) && want.get(name)?.d.state !== 'absent') || present.some(({ d }) => d.name === name && isVirtual(d.type));
  const steps: Step[] = [];
  const ip = (...args: string[]) => steps.push({ tool: 'ip', args });

  for (const { d, i } of present) {
    const c = cur.get(d.name);
    if (d.type === 'ethernet') {
      if (!c) throw new PlanError(`${FIELD(i)}.name`, `interface ${d.name} (type ethernet) does not exist on this node`);
      if (isVirtual(c.type)) throw new PlanError(`${FIELD(i)}.type`, `${d.name} exists with type ${c.type}, not ethernet`);
    } else if (c && c.type !== d.type) throw new PlanError(`${FIELD(i)}.type`, `${d.name} exists with type ${c.type}, not ${d.type}`);
    if (d.type === 'vlan' && d.vlan && !willExist(d.vlan['base-iface']))
      throw new PlanError(`${FIELD(i)}.vlan.base-iface`, `base interface ${d.vlan['base-iface']} does not exist on this node and the policy does not make it`);
    (d.bridge?.port ?? []).forEach((p, j) => {
      if (!willExist(p.name))
        throw new PlanError(`${FIELD(i)}.bridge.port[${j}].name`, `port ${p.name} does not exist on this node and the policy does not make it`);
    });
  }

  // 1. Removals: a bridge or vlan is deleted, anything else (a NIC) taken down without addresses.
  for (const d of absent) {
    const c = cur.get(d.name);
    if (!c) continue;
    if (isVirtual(c.type)) ip('link', 'del', 'dev', d.name);
    else {
      if (c.ipv4.address.length) ip('addr', 'flush', 'dev', d.name);
      if (c.state === 'up') ip('link', 'set', 'dev', d.name, 'down');
    }
  }
  // 2. Bridges.
  const made = new Set<string>();
  for (const { d } of present.filter(({ d }) => d.type === 'linux-bridge')) {
    const stp = d.bridge?.options?.stp?.enabled;
    const c = cur.get(d.name);
    if (!c) {
      ip('link', 'add', d.name, 'type', 'bridge', ...(stp === undefined ? [] : ['stp_state', stp ? '1' : '0']));
      made.add(d.name);
    } else if (stp !== undefined && c.bridge?.options.stp.enabled !== stp) ip('link', 'set', 'dev', d.name, 'type', 'bridge', 'stp_state', stp ? '1' : '0');
  }
  // 3. Vlans, a base before the vlans on it (a vlan may sit on a vlan or bridge of the policy).
  const vlans = present.filter(({ d }) => d.type === 'vlan' && d.vlan);
  const pending = [...vlans];
  while (pending.length) {
    const k = pending.findIndex(({ d }) => !pending.some((o) => o.d.name === d.vlan!['base-iface']));
    if (k < 0) throw new PlanError(`${FIELD(pending[0].i)}.vlan.base-iface`, 'the vlans of the policy are built on each other in a cycle');
    const { d } = pending.splice(k, 1)[0];
    const c = cur.get(d.name);
    const v = d.vlan!;
    if (c && (c.vlan?.['base-iface'] !== v['base-iface'] || c.vlan?.id !== v.id)) ip('link', 'del', 'dev', d.name);
    else if (c) continue;
    steps.push(...vlanCreate(d.name, v['base-iface'], v.id, mode));
    made.add(d.name);
  }
  const order = (d: DesiredInterface) => (d.type === 'linux-bridge' ? 2 : d.type === 'vlan' ? 1 : 0);
  const byLayer = [...present].sort((a, b) => order(a.d) - order(b.d));
  // 4. MTUs: lower layers first, a bridge's MTU is bounded by its ports'.
  for (const { d } of byLayer)
    if (d.mtu !== undefined && (made.has(d.name) || cur.get(d.name)?.mtu !== d.mtu)) ip('link', 'set', 'dev', d.name, 'mtu', String(d.mtu));
  // 5. Bridge ports: exactly the listed ones when a list is given.
  for (const { d } of present.filter(({ d }) => d.type === 'linux-bridge' && d.bridge?.port !== undefined)) {
    const listed = d.bridge!.port!;
    const had = new Set((cur.get(d.name)?.bridge?.port ?? []).map((p) => p.name));
    for (const p of had) if (!listed.some((l) => l.name === p)) ip('link', 'set', 'dev', p, 'nomaster');
    for (const p of listed) if (!had.has(p.name)) ip('link', 'set', 'dev', p.name, 'master', d.name);
    if (listed.some((p) => p.vlan)) {
      ip('link', 'set', 'dev', d.name, 'type', 'bridge', 'vlan_filtering', '1');
      for (const p of listed.filter((l) => l.vlan)) {
        const v = p.vlan!;
        steps.push({ tool: 'bridge', args: ['vlan', 'del', 'dev', p.name, 'vid', '1'] });
        if ((v.mode ?? 'trunk') === 'access' && v.tag !== undefined)
          steps.push({ tool: 'bridge', args: ['vlan', 'add', 'dev', p.name, 'vid', String(v.tag), 'pvid', 'untagged'] });
        for (const t of v['trunk-tags'] ?? []) steps.push({ tool: 'bridge', args: ['vlan', 'add', 'dev', p.name, 'vid', String(t.id)] });
      }
    }
  }
  // 6. IPv4 addresses: exactly the listed ones; `enabled: false` removes them all.
  for (const { d } of present) {
    if (!d.ipv4) continue;
    const have = cur.get(d.name)?.ipv4.address ?? [];
    const wantAddrs = d.ipv4.enabled === false ? [] : (d.ipv4.address ?? []);
    const key = (a: nmstate.Ipv4Address) => `${a.ip}/${a['prefix-length']}`;
    for (const a of have) if (!wantAddrs.some((w) => key(w) === key(a))) ip('addr', 'del', key(a), 'dev', d.name);
    for (const a of [...wantAddrs].sort((x, y) => (parseIPv4(x.ip) ?? 0) - (parseIPv4(y.ip) ?? 0)))
      if (!have.some((h) => key(h) === key(a))) ip('addr', 'add', key(a), 'dev', d.name);
  }
  // 7. Link state, lower layers first.
  for (const { d } of byLayer) {
    const up = (d.state ?? 'up') === 'up';
    const wasUp = !made.has(d.name) && cur.get(d.name)?.state === 'up';
    if (up !== wasUp && (up || cur.has(d.name))) ip('link', 'set', 'dev', d.name, up ? 'up' : 'down');
  }
  return steps;
}

/** The names a desired state touches: its interfaces, their ports and vlan bases. */
export function touchedNames(desired: readonly DesiredInterface[]): string[] {
  const names = new Set<string>();
  for (const d of desired) {
    names.add(d.name);
    for (const p of d.bridge?.port ?? []) names.add(p.name);
  }
  return [...names].sort();
}

/**
 * The desired state that takes the touched interfaces back to `snapshot` (what they were before
 * a policy): those that did not exist are removed, bridges and vlans that were removed come
 * back, and each one's MTU, ports, addresses and state are as they were.
 */
export function rollbackState(touched: readonly string[], snapshot: readonly CurrentInterface[]): DesiredInterface[] {
  const before = new Map(snapshot.map((s) => [s.name, s]));
  const out: DesiredInterface[] = [];
  for (const name of touched) {
    const s = before.get(name);
    if (!s) {
      out.push({ name, state: 'absent' });
      continue;
    }
    const d: DesiredInterface = {
      name,
      type: s.type === 'linux-bridge' || s.type === 'vlan' ? s.type : 'ethernet',
      state: s.state,
      ...(s.mtu !== undefined ? { mtu: s.mtu } : {}),
      ipv4: { enabled: s.ipv4.address.length > 0, address: s.ipv4.address },
    };
    if (s.bridge) d.bridge = { options: { stp: { enabled: s.bridge.options.stp.enabled } }, port: s.bridge.port.map((p) => ({ name: p.name })) };
    if (s.vlan) d.vlan = s.vlan;
    out.push(d);
  }
  // A port that was enslaved elsewhere goes back to its bridge: list that bridge too.
  for (const name of touched) {
    const master = before.get(name)?.controller;
    const m = master === undefined ? undefined : before.get(master);
    if (m?.bridge && !out.some((d) => d.name === master))
      out.push({ name: m.name, type: 'linux-bridge', bridge: { port: m.bridge.port.map((p) => ({ name: p.name })) } });
  }
  return out;
}

// ---- conditions ------------------------------------------------------------------------------

export type ConditionStatus = 'True' | 'False';
export interface Cond {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
}

const { Condition: C, ConditionReason: R } = nmstate;
export type EnactmentPhase = 'Progressing' | 'Available' | 'Failing' | 'Aborted' | 'Pending';

/** An enactment's five conditions, kubernetes-nmstate's way: the one of `phase` True, the rest False. */
export function enactmentConditions(phase: EnactmentPhase, message: string): Cond[] {
  const reason = { Progressing: R.Progressing, Available: R.Success, Failing: R.Failed, Aborted: R.Aborted, Pending: 'MaxUnavailableLimitReached' }[phase];
  return [C.Failing, C.Available, C.Progressing, C.Pending, C.Aborted].map((type) =>
    type === phase ? { type, status: 'True', reason, message } : { type, status: 'False', reason: '', message: '' },
  );
}

/** The phase an enactment's conditions say (the True one), or undefined. */
export function phaseOf(conditions: readonly { type?: string; status?: string }[] | undefined): EnactmentPhase | undefined {
  return (conditions ?? []).find((c) => c.status === 'True')?.type as EnactmentPhase | undefined;
}

/**
 * A policy's conditions from the phases of its enactments on the nodes it selects (undefined: no
 * enactment yet), as kubernetes-nmstate aggregates them: Progressing while any node has not
 * finished, then Degraded if any failed (or aborted), else Available with "N/M nodes
 * successfully configured".
 */
export function policyConditions(phases: readonly (EnactmentPhase | undefined)[]): Cond[] {
  const total = phases.length;
  const count = (p: EnactmentPhase) => phases.filter((x) => x === p).length;
  const ok = count('Available');
  const failed = count('Failing');
  const aborted = count('Aborted');
  const done = ok + failed + aborted;
  let which: { type: string; reason: string; message: string };
  if (total === 0) which = { type: C.Available, reason: R.NoMatchingNode, message: 'Policy does not match any node' };
  else if (done < total) which = { type: C.Progressing, reason: R.Progressing, message: `Policy is progressing ${done}/${total} nodes finished` };
  else if (failed + aborted > 0)
    which = {
      type: C.Degraded,
      reason: R.Failed,
      message: `${failed}/${total} nodes failed to configure${aborted ? `, ${aborted} nodes aborted configuration` : ''}`,
    };
  else which = { type: C.Available, reason: R.Success, message: `${ok}/${total} nodes successfully configured` };
  return [C.Available, C.Degraded, C.Progressing].map((type) =>
    type === which.type ? { type, status: 'True', reason: which.reason, message: which.message } : { type, status: 'False', reason: '', message: '' },
  );
}
