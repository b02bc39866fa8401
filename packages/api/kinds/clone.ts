/**
 * KubeVirt clone semantics (clone.kubevirt.io/v1beta1), following virt-api's
 * VirtualMachineCloneAdmitter: the source is a VirtualMachine (kubevirt.io) or a
 * VirtualMachineSnapshot (snapshot.kubevirt.io), the target (optional: a name is generated) a
 * VirtualMachine other than the source, new MAC addresses are MAC addresses, label and
 * annotation filters are well formed ("!" only first, "*" only last), patches are JSON, and the
 * spec is immutable after creation. Whether the caller may read the source is admission's
 * (apiserver/admission.ts).
 */
import { invalid, notSupported, required } from '../errors.ts';
import { dns1123Subdomain } from '../names.ts';
import type { KubeObject } from '../types.ts';
import { KUBEVIRT_GROUP, SNAPSHOT_GROUP, checkPatches, immutableSpec } from './snapshot.ts';
import { arr, isSet, obj, str, type SemanticContext } from './util.ts';

/** The kinds a clone may copy from, with the API group each belongs to. */
export const CLONE_SOURCE_KINDS: Readonly<Record<string, string>> = { VirtualMachine: KUBEVIRT_GROUP, VirtualMachineSnapshot: SNAPSHOT_GROUP };
export const VOLUME_NAME_POLICIES = ['RandomizeNames'] as const;

const MAC_COLON_RE = /^[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$/;
const MAC_DOT_RE = /^[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}$/;
const MAC_EXAMPLE = 'e.g. 02:00:00:00:00:01';

/** Why `mac` cannot be a NIC's MAC address ("malformed MAC address: ..."), or undefined when it can. */
export function macAddressProblem(mac: string): string | undefined {
  if (!MAC_COLON_RE.test(mac) && !MAC_DOT_RE.test(mac)) return `malformed MAC address: give six hexadecimal octets, ${MAC_EXAMPLE}`;
  const firstOctet = parseInt(mac.replace(/[:.-]/g, '').slice(0, 2), 16);
  if (firstOctet & 1) return `multicast MAC address: a NIC needs a unicast one (the first octet even), ${MAC_EXAMPLE}`;
  return undefined;
}

/** Label/annotation filters: "key", "prefix*", "!key", "!prefix*"; "*" alone matches everything. */
function checkFilters(filters: unknown[], field: string, ctx: SemanticContext): void {
  filters.forEach((f, i) => {
    const path = `${field}[${i}]`;
    if (typeof f !== 'string') return; // structural validation reported it
    if (f === '') ctx.causes.push(required(path, 'a filter is a key or key prefix, e.g. "example.com/*" or "!example.com/internal"'));
    else if (f === '!') ctx.causes.push(invalid(path, f, 'a negation character is not a valid filter'));
    else if (f.slice(1).includes('!')) ctx.causes.push(invalid(path, f, 'cannot contain a negation character (!) except at the beginning of the filter'));
    else if (f.slice(0, -1).includes('*')) ctx.causes.push(invalid(path, f, 'cannot contain a wildcard character (*) except at the end of the filter'));
  });
}

export function validateVirtualMachineClone(o: KubeObject, ctx: SemanticContext): void {
  immutableSpec(o, ctx, 'VirtualMachineClone');
  const spec = obj(o.spec);
  if (ctx.op !== 'create' || !spec) return;
  const causes = ctx.causes;

  const source = obj(spec.source);
  const sourceKind = str(source?.kind);
  const sourceName = str(source?.name);
  if (source) {
    // A missing source, kind or name is reported by structural validation (they are required).
    const sourceGroup = sourceKind !== undefined ? CLONE_SOURCE_KINDS[sourceKind] : undefined;
    if (sourceKind === '') causes.push(required('spec.source.kind', 'set kind: VirtualMachine or VirtualMachineSnapshot'));
    else if (sourceKind !== undefined && !sourceGroup) causes.push(notSupported('spec.source.kind', sourceKind, Object.keys(CLONE_SOURCE_KINDS)));
    const apiGroup = source.apiGroup;
    if (!isSet(apiGroup) || apiGroup === '') {
      causes.push(required('spec.source.apiGroup', `Source's APIGroup cannot be empty: set apiGroup: ${sourceGroup ?? 'kubevirt.io or snapshot.kubevirt.io'}`));
    } else if (typeof apiGroup === 'string' && sourceGroup && apiGroup !== sourceGroup) {
      causes.push(invalid('spec.source.apiGroup', apiGroup, `a ${sourceKind} is in API group ${sourceGroup}`));
    }
    if (sourceName === '') causes.push(required('spec.source.name', "Source's name cannot be empty"));
  }

  const target = obj(spec.target);
  if (target) {
    const targetKind = str(target.kind);
    if (targetKind !== undefined && targetKind !== 'VirtualMachine') causes.push(notSupported('spec.target.kind', targetKind, ['VirtualMachine']));
    const apiGroup = str(target.apiGroup);
    if (apiGroup && apiGroup !== KUBEVIRT_GROUP) causes.push(invalid('spec.target.apiGroup', apiGroup, `a VirtualMachine is in API group ${KUBEVIRT_GROUP}`));
    const targetName = str(target.name);
    if (targetName === '') {
      causes.push(required('spec.target.name', 'name the VirtualMachine to create, or leave out spec.target for a generated name'));
    } else if (targetName !== undefined) {
      for (const e of dns1123Subdomain(targetName)) causes.push(invalid('spec.target.name', targetName, e));
      // Source and target live in the clone's namespace (local references): the same name is the same VM.
      if (sourceKind === 'VirtualMachine' && targetKind === 'VirtualMachine' && targetName === sourceName) {
        causes.push(invalid('spec.target.name', targetName, 'Target name cannot be equal to source name when both are VirtualMachines'));
      }
    }
  }

  const macs = obj(spec.newMacAddresses);
  if (macs) {
    for (const [iface, mac] of Object.entries(macs)) {
      if (typeof mac !== 'string' || mac === '') continue; // "" means "generate one", as upstream
      const problem = macAddressProblem(mac);
      if (problem) causes.push(invalid(`spec.newMacAddresses.${iface}`, mac, `interface ${iface} has a ${problem}`));
    }
  }

  checkFilters(arr(spec.annotationFilters), 'spec.annotationFilters', ctx);
  checkFilters(arr(spec.labelFilters), 'spec.labelFilters', ctx);
  const template = obj(spec.template);
  checkFilters(arr(template?.annotationFilters), 'spec.template.annotationFilters', ctx);
  checkFilters(arr(template?.labelFilters), 'spec.template.labelFilters', ctx);

  checkPatches(arr(spec.patches), '{"op": "add", "path": "/spec/template/metadata/labels/example", "value": "new-label"}', ctx);

  const policy = str(spec.volumeNamePolicy);
  if (policy !== undefined && !(VOLUME_NAME_POLICIES as readonly string[]).includes(policy)) {
    causes.push(notSupported('spec.volumeNamePolicy', policy, VOLUME_NAME_POLICIES));
  }
}
