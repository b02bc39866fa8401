/**
 * Semantics of the cluster network's kinds, as kube-apiserver validates them where a user (or
 * a controller's bug) could go wrong: an IPAddress is named by a canonical address and names
 * its parent, both fixed once made; an EndpointSlice's addresses match its address type; a
 * NetworkPolicy's selectors, ports and ipBlocks are well formed; a NetworkAttachmentDefinition's
 * CNI config is one Vessel builds (nad.ts).
 */
import { duplicate, forbidden, invalid, notSupported, required } from '../errors.ts';
import { parseIPv4 } from '../ip.ts';
import { dns1123Label, labelValue, qualifiedName } from '../names.ts';
import * as nad from '../nad.ts';
import * as netpol from '../netpol.ts';
import type { KubeObject } from '../types.ts';
import { arr, isObj, isSet, jsonEqual, obj, str, type SemanticContext } from './util.ts';

const ADDRESS_TYPES = ['IPv4', 'IPv6', 'FQDN'];
const PROTOCOLS = ['TCP', 'UDP', 'SCTP'];

export function validateIPAddress(o: KubeObject, ctx: SemanticContext): void {
  const name = o.metadata?.name;
  // Only IPv4 is served: Vessel's networks are IPv4 (docs/network.md).
  if (typeof name === 'string' && parseIPv4(name) === undefined)
    ctx.causes.push(invalid('metadata.name', name, 'must be an IPv4 address in canonical form, such as 10.244.0.5'));
  const spec = obj(o.spec);
  const parent = obj(spec?.parentRef);
  // spec.parentRef with its resource and name are required by the schema (the structural walk).
  if (ctx.op === 'update' && ctx.old && !jsonEqual(obj(ctx.old.spec)?.parentRef, parent)) {
    ctx.causes.push(invalid('spec.parentRef', parent ?? null, 'field is immutable: delete the IPAddress and create it again'));
  }
}

export function validateEndpointSlice(o: KubeObject, ctx: SemanticContext): void {
  const body = o as KubeObject & Record<string, unknown>;
  const type = str(body.addressType);
  // addressType is required by the schema (the structural walk).
  if (type && !ADDRESS_TYPES.includes(type)) ctx.causes.push(notSupported('addressType', type, ADDRESS_TYPES));
  else if (ctx.op === 'update' && ctx.old && str((ctx.old as Record<string, unknown>).addressType) !== type)
    ctx.causes.push(invalid('addressType', type, 'field is immutable'));
  arr(body.endpoints).forEach((e, i) => {
    if (!isObj(e)) return;
    const addresses = arr(e.addresses);
    if (addresses.length === 0 || addresses.length > 100)
      ctx.causes.push(invalid(`endpoints[${i}].addresses`, addresses.length, 'must have from 1 to 100 addresses'));
    addresses.forEach((a, j) => {
      if (type === 'IPv4' && (typeof a !== 'string' || parseIPv4(a) === undefined))
        ctx.causes.push(invalid(`endpoints[${i}].addresses[${j}]`, a as string, 'must be an IPv4 address'));
    });
  });
  const names = new Set<string>();
  arr(body.ports).forEach((p, i) => {
    if (!isObj(p)) return;
    const name = str(p.name) ?? '';
    if (name) for (const e of dns1123Label(name)) ctx.causes.push(invalid(`ports[${i}].name`, name, e));
    if (names.has(name)) ctx.causes.push(duplicate(`ports[${i}].name`, name));
    names.add(name);
    if (typeof p.port === 'number' && (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535))
      ctx.causes.push(invalid(`ports[${i}].port`, p.port, 'must be between 1 and 65535, inclusive'));
    const protocol = str(p.protocol);
    if (protocol !== undefined && !PROTOCOLS.includes(protocol)) ctx.causes.push(notSupported(`ports[${i}].protocol`, protocol, PROTOCOLS));
  });
}

/** A label selector as Kubernetes validates one (ValidateLabelSelector): keys, values, operators. */
function validateSelector(sel: unknown, path: string, ctx: SemanticContext): void {
  const s = obj(sel);
  if (!s) return;
  for (const [k, v] of Object.entries(obj(s.matchLabels) ?? {})) {
    for (const e of qualifiedName(k)) ctx.causes.push(invalid(`${path}.matchLabels`, k, e));
    if (typeof v === 'string') for (const e of labelValue(v)) ctx.causes.push(invalid(`${path}.matchLabels`, v, e));
  }
  arr(s.matchExpressions).forEach((x, i) => {
    const e = obj(x);
    if (!e) return;
    const p = `${path}.matchExpressions[${i}]`;
    const key = str(e.key);
    if (key !== undefined) for (const m of qualifiedName(key)) ctx.causes.push(invalid(`${p}.key`, key, m));
    const op = str(e.operator);
    const values = arr(e.values);
    if (op !== undefined && !(netpol.SELECTOR_OPERATORS as readonly string[]).includes(op))
      ctx.causes.push(notSupported(`${p}.operator`, op, netpol.SELECTOR_OPERATORS));
    else if ((op === 'In' || op === 'NotIn') && values.length === 0)
      ctx.causes.push(required(`${p}.values`, "must be specified when `operator` is 'In' or 'NotIn'"));
    else if ((op === 'Exists' || op === 'DoesNotExist') && values.length > 0)
      ctx.causes.push(forbidden(`${p}.values`, "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"));
    values.forEach((v, j) => {
      if (typeof v === 'string') for (const m of labelValue(v)) ctx.causes.push(invalid(`${p}.values[${j}]`, v, m));
    });
  });
}

function validatePolicyPort(x: unknown, path: string, ctx: SemanticContext): void {
  const p = obj(x);
  if (!p) return;
  const protocol = str(p.protocol);
  if (protocol !== undefined && !(netpol.PROTOCOLS as readonly string[]).includes(protocol))
    ctx.causes.push(notSupported(`${path}.protocol`, protocol, netpol.PROTOCOLS));
  const port = p.port;
  if (typeof port === 'number' && (!Number.isInteger(port) || port < 1 || port > 65535))
    ctx.causes.push(invalid(`${path}.port`, port, 'must be between 1 and 65535, inclusive'));
  if (typeof port === 'string') for (const e of ianaSvcName(port)) ctx.causes.push(invalid(`${path}.port`, port, e));
  if (isSet(p.endPort)) {
    const end = p.endPort;
    if (typeof port !== 'number') ctx.causes.push(required(`${path}.port`, 'when endPort is specified, port must be a number'));
    else if (typeof end === 'number' && end < port) ctx.causes.push(invalid(`${path}.endPort`, end, 'must be greater than or equal to `port`'));
    if (typeof end === 'number' && (!Number.isInteger(end) || end < 1 || end > 65535))
      ctx.causes.push(invalid(`${path}.endPort`, end, 'must be between 1 and 65535, inclusive'));
  }
}

/** kube's IsValidPortName: at most 15 lower-case letters, digits and '-', a letter, no '--'. */
function ianaSvcName(s: string): string[] {
  const errs: string[] = [];
  if (s.length === 0 || s.length > 15) errs.push('must be no more than 15 characters');
  if (!/^[-a-z0-9]+$/.test(s)) errs.push('must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)');
  if (!/[a-z]/.test(s)) errs.push('must contain at least one letter (a-z)');
  if (s.includes('--')) errs.push('must not contain consecutive hyphens');
  if (s.startsWith('-') || s.endsWith('-')) errs.push('must not begin or end with a hyphen');
  return errs;
}

function validatePeer(x: unknown, path: string, ctx: SemanticContext): void {
  const p = obj(x);
  if (!p) return;
  const kinds = [isSet(p.podSelector) || isSet(p.namespaceSelector), isSet(p.ipBlock)].filter(Boolean).length;
  if (kinds === 0) ctx.causes.push(required(path, 'must specify a peer'));
  else if (kinds > 1) ctx.causes.push(forbidden(path, 'may not specify more than 1 peer type (ipBlock with podSelector or namespaceSelector)'));
  validateSelector(p.podSelector, `${path}.podSelector`, ctx);
  validateSelector(p.namespaceSelector, `${path}.namespaceSelector`, ctx);
  const ipb = obj(p.ipBlock);
  if (!ipb) return;
  const cidrText = str(ipb.cidr);
  if (!cidrText) {
    ctx.causes.push(required(`${path}.ipBlock.cidr`));
    return;
  }
  const cidr = netpol.parseBlock(cidrText);
  if (!cidr) ctx.causes.push(invalid(`${path}.ipBlock.cidr`, cidrText, 'must be a valid IPv4 CIDR such as 10.0.0.0/8'));
  arr(ipb.except).forEach((e, i) => {
    const f = `${path}.ipBlock.except[${i}]`;
    const b = typeof e === 'string' ? netpol.parseBlock(e) : undefined;
    if (!b) ctx.causes.push(invalid(f, e, 'must be a valid IPv4 CIDR such as 10.0.0.0/24'));
    else if (cidr && !netpol.strictlyWithin(b, cidr)) ctx.causes.push(invalid(f, e, 'must be a strict subset of `cidr`'));
  });
}

/** What kube-apiserver's ValidateNetworkPolicy checks that a user can get wrong, the field named. */
export function validateNetworkPolicy(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  validateSelector(spec.podSelector, 'spec.podSelector', ctx);
  const types = arr(spec.policyTypes);
  if (types.length > 2) ctx.causes.push(invalid('spec.policyTypes', types, 'may not specify more than two policyTypes'));
  types.forEach((t, i) => {
    if (typeof t === 'string' && !(netpol.POLICY_TYPES as readonly string[]).includes(t))
      ctx.causes.push(notSupported(`spec.policyTypes[${i}]`, t, netpol.POLICY_TYPES));
  });
  for (const dir of ['ingress', 'egress'] as const) {
    arr(spec[dir]).forEach((r, i) => {
      const rule = obj(r);
      if (!rule) return;
      arr(rule.ports).forEach((p, j) => validatePolicyPort(p, `spec.${dir}[${i}].ports[${j}]`, ctx));
      const peers = dir === 'ingress' ? 'from' : 'to';
      arr(rule[peers]).forEach((p, j) => validatePeer(p, `spec.${dir}[${i}].${peers}[${j}]`, ctx));
    });
  }
}

/** A NetworkAttachmentDefinition's `spec.config`: a CNI config Vessel can build (nad.ts says why not). */
export function validateNetworkAttachmentDefinition(o: KubeObject, ctx: SemanticContext): void {
  const config = obj(o.spec)?.config;
  // Multus' CRD leaves the config optional (a NAD may name a config file on the node); Vessel has none.
  if (config === undefined || config === null) {
    ctx.causes.push(required('spec.config', 'a CNI configuration (JSON) of type bridge'));
    return;
  }
  if (typeof config !== 'string') return; // the structural walk says it must be a string
  const r = nad.parseConfig(config);
  if (r.problem) ctx.causes.push(invalid('spec.config', config.length > 200 ? `${config.slice(0, 200)}...` : config, r.problem));
}
