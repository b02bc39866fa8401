/**
 * Discovery documents (/api, /apis, /apis/<group>/<version>) built from the kind registry,
 * in the legacy (unaggregated) form that every kubectl and client library understands.
 */
import { createHash } from 'node:crypto';
import { kinds, servedKinds } from '@vessel/api';
import type { KindInfo } from '@vessel/api';

const VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'];

export const serverVersion = {
  major: '1',
  minor: '32',
  gitVersion: 'v1.32.0+vessel',
  gitCommit: '',
  gitTreeState: 'clean',
  buildDate: '2026-01-01T00:00:00Z',
  goVersion: 'node' + process.versions.node,
  compiler: 'tsx',
  platform: `${process.platform}/${process.arch === 'x64' ? 'amd64' : process.arch}`,
};

export function groupVersions(): Map<string, { group: string; version: string; kinds: KindInfo[] }> {
  const out = new Map<string, { group: string; version: string; kinds: KindInfo[] }>();
  for (const k of servedKinds) {
    const gv = k.group ? `${k.group}/${k.version}` : k.version;
    if (!out.has(gv)) out.set(gv, { group: k.group, version: k.version, kinds: [] });
    out.get(gv)!.kinds.push(k);
  }
  return out;
}

export function apiVersions(serverAddress: string) {
  return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress }] };
}

function apiGroup(group: string) {
  const versions = [...groupVersions().values()].filter((g) => g.group === group).map((g) => ({ groupVersion: `${group}/${g.version}`, version: g.version }));
  return { name: group, versions, preferredVersion: versions[0] };
}

export function apiGroupList() {
  const groups = [...new Set(kinds.map((k) => k.group).filter((g) => g !== ''))];
  return { kind: 'APIGroupList', apiVersion: 'v1', groups: groups.map(apiGroup) };
}

export function apiGroupDoc(group: string) {
  const g = apiGroup(group);
  return g.versions.length ? { kind: 'APIGroup', apiVersion: 'v1', ...g } : undefined;
}

export function apiResourceList(group: string, version: string) {
  const gv = groupVersions().get(group ? `${group}/${version}` : version);
  if (!gv) return undefined;
  const resources = gv.kinds.flatMap((k) => [
    {
      name: k.plural,
      singularName: k.singular,
      namespaced: k.namespaced,
      kind: k.kind,
      verbs: VERBS,
      ...(k.shortNames.length ? { shortNames: k.shortNames } : {}),
      ...(k.categories.length ? { categories: k.categories } : {}),
      storageVersionHash: createHash('sha256')
        .update(`${group}/${k.storageVersion ?? version}/${k.kind}`)
        .digest('base64')
        .slice(0, 11),
    },
    ...(k.statusSubresource
      ? [{ name: `${k.plural}/status`, singularName: '', namespaced: k.namespaced, kind: k.kind, verbs: ['get', 'patch', 'update'] }]
      : []),
    ...(k.scaleSubresource
      ? [
          {
            name: `${k.plural}/scale`,
            singularName: '',
            namespaced: k.namespaced,
            group: 'autoscaling',
            version: 'v1',
            kind: 'Scale',
            verbs: ['get', 'patch', 'update'],
          },
        ]
      : []),
  ]);
  return { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: group ? `${group}/${version}` : version, resources };
}
