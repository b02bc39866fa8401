/**
 * Admission of a NodeNetworkConfigurationPolicy: the subset of nmstate's desired state Vessel
 * applies (interfaces of type linux-bridge, vlan, ethernet), checked with the field named so a
 * policy the agents could not apply is refused before it is stored. kubernetes-nmstate checks
 * less at admission (nmstate finds the rest on the node); what only a node can know (does this
 * port exist there?) is reported in that node's enactment.
 */
import { duplicate, forbidden, invalid, notSupported, required } from '../errors.ts';
import { parseIPv4 } from '../ip.ts';
import { labelValue, qualifiedName } from '../names.ts';
import { ifnameProblem, INTERFACE_STATES, INTERFACE_TYPES, PORT_VLAN_MODES } from '../nmstate.ts';
import type { KubeObject } from '../types.ts';
import { arr, isSet, obj, str, type SemanticContext } from './util.ts';

const INTERFACE_FIELDS = ['name', 'type', 'state', 'mtu', 'ipv4', 'ipv6', 'bridge', 'vlan', 'description'];

function checkName(v: unknown, path: string, ctx: SemanticContext): string | undefined {
  if (!isSet(v) || v === '') {
    ctx.causes.push(required(path));
    return undefined;
  }
  if (typeof v !== 'string') {
    ctx.causes.push(invalid(path, v, 'must be a string'));
    return undefined;
  }
  const problem = ifnameProblem(v);
  if (problem) ctx.causes.push(invalid(path, v, problem));
  return v;
}

const isInt = (v: unknown, min: number, max: number): boolean => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;

function validateIpv4(v: unknown, path: string, ctx: SemanticContext): void {
  const ipv4 = obj(v);
  if (!ipv4) return;
  for (const k of Object.keys(ipv4))
    if (!['enabled', 'dhcp', 'address'].includes(k)) ctx.causes.push(forbidden(`${path}.${k}`, 'not supported by Vessel (enabled, dhcp: false, address)'));
  if (isSet(ipv4.enabled) && typeof ipv4.enabled !== 'boolean') ctx.causes.push(invalid(`${path}.enabled`, ipv4.enabled, 'must be a boolean'));
  if (ipv4.dhcp === true) ctx.causes.push(invalid(`${path}.dhcp`, true, 'DHCP on node interfaces is not supported by Vessel: give static addresses'));
  const addresses = arr(ipv4.address);
  if (ipv4.enabled === false && addresses.length > 0) ctx.causes.push(forbidden(`${path}.address`, 'must be empty when ipv4 is not enabled'));
  const seen = new Set<string>();
  addresses.forEach((a, j) => {
    const p = `${path}.address[${j}]`;
    const addr = obj(a);
    if (!addr) return ctx.causes.push(invalid(p, a, 'must be an object with ip and prefix-length'));
    const ip = addr.ip;
    if (!isSet(ip)) ctx.causes.push(required(`${p}.ip`));
    else if (typeof ip !== 'string' || parseIPv4(ip) === undefined) ctx.causes.push(invalid(`${p}.ip`, ip, 'must be an IPv4 address such as 192.0.2.10'));
    const len = addr['prefix-length'];
    if (!isSet(len)) ctx.causes.push(required(`${p}.prefix-length`));
    else if (!isInt(len, 1, 32)) ctx.causes.push(invalid(`${p}.prefix-length`, len, 'must be an integer from 1 to 32'));
    if (typeof ip === 'string') {
      if (seen.has(ip)) ctx.causes.push(duplicate(`${p}.ip`, ip));
      seen.add(ip);
    }
  });
}

function validateBridge(v: unknown, path: string, ctx: SemanticContext): string[] {
  const bridge = obj(v);
  if (!bridge) return [];
  const stp = obj(obj(bridge.options)?.stp);
  if (stp && isSet(stp.enabled) && typeof stp.enabled !== 'boolean') ctx.causes.push(invalid(`${path}.options.stp.enabled`, stp.enabled, 'must be a boolean'));
  const names: string[] = [];
  arr(bridge.port).forEach((x, j) => {
    const p = `${path}.port[${j}]`;
    const port = obj(x);
    if (!port) return ctx.causes.push(invalid(p, x, 'must be an object with a name'));
    const name = checkName(port.name, `${p}.name`, ctx);
    if (name !== undefined) {
      if (names.includes(name)) ctx.causes.push(duplicate(`${p}.name`, name));
      names.push(name);
    }
    const vlan = obj(port.vlan);
    if (!vlan) return;
    const mode = str(vlan.mode) ?? 'trunk';
    if (!(PORT_VLAN_MODES as readonly string[]).includes(mode)) ctx.causes.push(notSupported(`${p}.vlan.mode`, vlan.mode, PORT_VLAN_MODES));
    if (isSet(vlan.tag) && !isInt(vlan.tag, 1, 4094)) ctx.causes.push(invalid(`${p}.vlan.tag`, vlan.tag, 'must be an integer from 1 to 4094'));
    if (mode === 'access' && !isSet(vlan.tag)) ctx.causes.push(required(`${p}.vlan.tag`, 'an access port needs its VLAN'));
    arr(vlan['trunk-tags']).forEach((t, k) => {
      const id = obj(t)?.id;
      if (!isInt(id, 1, 4094))
        ctx.causes.push(invalid(`${p}.vlan.trunk-tags[${k}].id`, id ?? null, 'must be an integer from 1 to 4094 (id-range is not supported)'));
    });
    if (mode === 'access' && arr(vlan['trunk-tags']).length > 0) ctx.causes.push(forbidden(`${p}.vlan.trunk-tags`, 'an access port has no trunk tags'));
  });
  return names;
}

/** The desired state as Vessel applies it; everything else is refused rather than silently ignored. */
export function validateNodeNetworkConfigurationPolicy(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  for (const [k, v] of Object.entries(obj(spec.nodeSelector) ?? {})) {
    for (const e of qualifiedName(k)) ctx.causes.push(invalid('spec.nodeSelector', k, e));
    if (typeof v === 'string') for (const e of labelValue(v)) ctx.causes.push(invalid(`spec.nodeSelector[${k}]`, v, e));
  }
  if (isSet(spec.capture)) ctx.causes.push(forbidden('spec.capture', 'not supported by Vessel'));
  if (!isSet(spec.desiredState)) {
    ctx.causes.push(required('spec.desiredState'));
    return;
  }
  const desired = obj(spec.desiredState);
  if (!desired) {
    ctx.causes.push(invalid('spec.desiredState', spec.desiredState, 'must be an object'));
    return;
  }
  for (const k of Object.keys(desired))
    if (k !== 'interfaces') ctx.causes.push(forbidden(`spec.desiredState.${k}`, 'not supported by Vessel: only interfaces'));
  if (isSet(desired.interfaces) && !Array.isArray(desired.interfaces)) {
    ctx.causes.push(invalid('spec.desiredState.interfaces', desired.interfaces, 'must be a list'));
    return;
  }
  const names = new Map<string, { state: string; index: number }>();
  const ports: { name: string; path: string; bridge: string | undefined }[] = [];
  arr(desired.interfaces).forEach((x, i) => {
    const path = `spec.desiredState.interfaces[${i}]`;
    const iface = obj(x);
    if (!iface) return ctx.causes.push(invalid(path, x, 'must be an object'));
    for (const k of Object.keys(iface)) if (!INTERFACE_FIELDS.includes(k)) ctx.causes.push(forbidden(`${path}.${k}`, 'not supported by Vessel'));
    const name = checkName(iface.name, `${path}.name`, ctx);
    const state = isSet(iface.state) ? iface.state : 'up';
    if (!(INTERFACE_STATES as readonly unknown[]).includes(state)) ctx.causes.push(notSupported(`${path}.state`, state, INTERFACE_STATES));
    if (name !== undefined) {
      if (names.has(name)) ctx.causes.push(duplicate(`${path}.name`, name));
      else names.set(name, { state: String(state), index: i });
    }
    const type = iface.type;
    if (!isSet(type)) {
      if (state !== 'absent') ctx.causes.push(required(`${path}.type`, `one of ${INTERFACE_TYPES.join(', ')}`));
    } else if (!(INTERFACE_TYPES as readonly unknown[]).includes(type)) ctx.causes.push(notSupported(`${path}.type`, type, INTERFACE_TYPES));
    if (isSet(iface.mtu) && !isInt(iface.mtu, 68, 65535)) ctx.causes.push(invalid(`${path}.mtu`, iface.mtu, 'must be an integer from 68 to 65535'));
    validateIpv4(iface.ipv4, `${path}.ipv4`, ctx);
    const ipv6 = obj(iface.ipv6);
    if (ipv6 && ipv6.enabled !== false) ctx.causes.push(forbidden(`${path}.ipv6`, 'only `enabled: false` is supported by Vessel'));
    if (isSet(iface.bridge) && type !== 'linux-bridge')
      ctx.causes.push(forbidden(`${path}.bridge`, 'only an interface of type linux-bridge has bridge settings'));
    else
      for (const [j, p] of validateBridge(iface.bridge, `${path}.bridge`, ctx).entries())
        ports.push({ name: p, path: `${path}.bridge.port[${j}].name`, bridge: name });
    if (type === 'vlan') {
      const vlan = obj(iface.vlan);
      if (!vlan) {
        if (state !== 'absent') ctx.causes.push(required(`${path}.vlan`, 'a vlan interface needs base-iface and id'));
      } else {
        const base = checkName(vlan['base-iface'], `${path}.vlan.base-iface`, ctx);
        if (base !== undefined && base === name) ctx.causes.push(invalid(`${path}.vlan.base-iface`, base, 'must not be the vlan interface itself'));
        if (!isSet(vlan.id)) ctx.causes.push(required(`${path}.vlan.id`));
        else if (!isInt(vlan.id, 1, 4094)) ctx.causes.push(invalid(`${path}.vlan.id`, vlan.id, 'must be an integer from 1 to 4094'));
      }
    } else if (isSet(iface.vlan)) ctx.causes.push(forbidden(`${path}.vlan`, 'only an interface of type vlan has vlan settings'));
  });
  // A port the policy itself removes, or a bridge enslaving itself, can never be applied.
  const seenPorts = new Map<string, string>();
  for (const p of ports) {
    if (p.name === p.bridge) ctx.causes.push(invalid(p.path, p.name, 'a bridge cannot be its own port'));
    const own = names.get(p.name);
    if (own?.state === 'absent') ctx.causes.push(invalid(p.path, p.name, `the policy removes this interface (interfaces[${own.index}].state: absent)`));
    const other = seenPorts.get(p.name);
    if (other !== undefined && other !== p.bridge) ctx.causes.push(duplicate(p.path, p.name, `already a port of ${other}`));
    seenPorts.set(p.name, p.bridge ?? '');
  }
}
