/**
 * Semantics of the cluster network's kinds, as kube-apiserver validates them where a user (or
 * a controller's bug) could go wrong: an IPAddress is named by a canonical address and names
 * its parent, both fixed once made; an EndpointSlice's addresses match its address type.
 */
import { duplicate, invalid, notSupported } from '../errors.ts';
import { parseIPv4 } from '../ip.ts';
import { dns1123Label } from '../names.ts';
import type { KubeObject } from '../types.ts';
import { arr, isObj, jsonEqual, obj, str, type SemanticContext } from './util.ts';

const ADDRESS_TYPES = ['IPv4', 'IPv6', 'FQDN'];
const PROTOCOLS = ['TCP', 'UDP', 'SCTP'];

export function validateIPAddress(o: KubeObject, ctx: SemanticContext): void {
  const name = o.metadata?.name;
  // Only IPv4 is served: Vessel's networks are IPv4 (docs/network.md).
  if (typeof name === 'string' && parseIPv4(name) === undefined) ctx.causes.push(invalid('metadata.name', name, 'must be an IPv4 address in canonical form, such as 10.244.0.5'));
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
  else if (ctx.op === 'update' && ctx.old && str((ctx.old as Record<string, unknown>).addressType) !== type) ctx.causes.push(invalid('addressType', type, 'field is immutable'));
  arr(body.endpoints).forEach((e, i) => {
    if (!isObj(e)) return;
    const addresses = arr(e.addresses);
    if (addresses.length === 0 || addresses.length > 100) ctx.causes.push(invalid(`endpoints[${i}].addresses`, addresses.length, 'must have from 1 to 100 addresses'));
    addresses.forEach((a, j) => {
      if (type === 'IPv4' && (typeof a !== 'string' || parseIPv4(a) === undefined)) ctx.causes.push(invalid(`endpoints[${i}].addresses[${j}]`, a as string, 'must be an IPv4 address'));
    });
  });
  const names = new Set<string>();
  arr(body.ports).forEach((p, i) => {
    if (!isObj(p)) return;
    const name = str(p.name) ?? '';
    if (name) for (const e of dns1123Label(name)) ctx.causes.push(invalid(`ports[${i}].name`, name, e));
    if (names.has(name)) ctx.causes.push(duplicate(`ports[${i}].name`, name));
    names.add(name);
    if (typeof p.port === 'number' && (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535)) ctx.causes.push(invalid(`ports[${i}].port`, p.port, 'must be between 1 and 65535, inclusive'));
    const protocol = str(p.protocol);
    if (protocol !== undefined && !PROTOCOLS.includes(protocol)) ctx.causes.push(notSupported(`ports[${i}].protocol`, protocol, PROTOCOLS));
  });
}
