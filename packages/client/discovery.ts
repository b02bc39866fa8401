/**
 * Resource types as the server's discovery documents describe them, and resolving the names
 * people type (`vm`, `vms`, `virtualmachine`, `VirtualMachine`, `vm.kubevirt.io`,
 * `virtualmachines.v1.kubevirt.io`) to one of them, the way kubectl does. Pure functions over
 * the documents, so they are testable without a server; Client fetches the documents.
 */
import { ClientError } from './errors.ts';

/** Enough to build a URL for a resource. */
export interface ResourceRef {
  group: string; // '' = the core group
  version: string;
  plural: string;
  namespaced: boolean;
}

/** One resource type from discovery. */
export interface ApiResource extends ResourceRef {
  kind: string;
  singular: string;
  shortNames: string[];
  categories: string[];
  verbs: string[];
  /** This version is the group's preferred version (what bare names resolve to). */
  preferred: boolean;
}

/** GET /api/v1 or /apis/<group>/<version> (metav1.APIResourceList). */
export interface APIResourceListDoc {
  kind?: string;
  groupVersion: string;
  resources: Array<{
    name: string;
    singularName?: string;
    namespaced: boolean;
    kind: string;
    verbs?: string[];
    shortNames?: string[];
    categories?: string[];
  }>;
}

/** GET /apis (metav1.APIGroupList). */
export interface APIGroupListDoc {
  kind?: string;
  groups: Array<{
    name: string;
    versions: Array<{ groupVersion: string; version: string }>;
    preferredVersion?: { groupVersion: string; version: string };
  }>;
}

/** Splits 'kubevirt.io/v1' into group and version ('v1' = core group). */
export function splitApiVersion(apiVersion: string): { group: string; version: string } {
  const slash = apiVersion.indexOf('/');
  return slash < 0 ? { group: '', version: apiVersion } : { group: apiVersion.slice(0, slash), version: apiVersion.slice(slash + 1) };
}

/** The resources of one APIResourceList, without subresources (`virtualmachines/status`). */
export function resourcesFromList(list: APIResourceListDoc, preferred: boolean): ApiResource[] {
  const { group, version } = splitApiVersion(list.groupVersion);
  return (list.resources ?? [])
    .filter((r) => !r.name.includes('/'))
    .map((r) => ({
      group,
      version,
      plural: r.name,
      // Old servers leave singularName empty; kubectl then uses the lowercased kind.
      singular: r.singularName || r.kind.toLowerCase(),
      kind: r.kind,
      namespaced: r.namespaced,
      shortNames: r.shortNames ?? [],
      categories: r.categories ?? [],
      verbs: r.verbs ?? [],
      preferred,
    }));
}

/** `virtualmachines.kubevirt.io` / `pods`: how Kubernetes names a resource type in messages. */
export function qualifiedResource(res: Pick<ApiResource, 'plural' | 'group'>): string {
  return res.group ? `${res.plural}.${res.group}` : res.plural;
}

/** `virtualmachine.kubevirt.io` / `namespace`: how kubectl prefixes names in its output. */
export function qualifiedKind(res: Pick<ApiResource, 'kind' | 'group'>): string {
  return res.group ? `${res.kind.toLowerCase()}.${res.group}` : res.kind.toLowerCase();
}

/**
 * Resolves a resource name to one resource type. Accepted: plural, singular, kind, short
 * name, each optionally followed by `.group` or `.version.group`; case-insensitive.
 * Preferred versions win over others, then the core group, then discovery order.
 */
export function resolveResource(resources: ApiResource[], name: string): ApiResource {
  const found = matchResources(resources, name);
  if (found.length === 0) {
    throw new ClientError(
      'UnknownResource',
      `the server doesn't have a resource type "${name}": list the types with \`vessel api-resources\` or check the spelling`,
    );
  }
  return found[0];
}

/**
 * Like resolveResource, but a name that is no resource type and is a category (`all`)
 * expands to every preferred resource type in that category.
 */
export function resolveResourceOrCategory(resources: ApiResource[], name: string): ApiResource[] {
  const found = matchResources(resources, name);
  if (found.length > 0) return [found[0]];
  const lower = name.toLowerCase();
  const inCategory = resources.filter((r) => r.preferred && r.categories.includes(lower));
  if (inCategory.length > 0) return inCategory;
  return [resolveResource(resources, name)];
}

/** The resource type for an object's apiVersion and kind (used for manifests). */
export function resourceForKind(resources: ApiResource[], apiVersion: string, kind: string): ApiResource {
  const { group, version } = splitApiVersion(apiVersion);
  const found = resources.find((r) => r.group === group && r.version === version && r.kind === kind);
  if (!found) {
    throw new ClientError('UnknownResource', `no matches for kind "${kind}" in version "${apiVersion}": check apiVersion and kind, or install the CRD first`);
  }
  return found;
}

function matchResources(resources: ApiResource[], rawName: string): ApiResource[] {
  const name = rawName.toLowerCase();
  // Candidates: the whole string (no group), `name.group`, and `name.version.group`.
  const wanted: Array<{ name: string; group?: string; version?: string }> = [{ name }];
  const dot = name.indexOf('.');
  if (dot > 0) {
    const head = name.slice(0, dot),
      rest = name.slice(dot + 1);
    wanted.push({ name: head, group: rest });
    const dot2 = rest.indexOf('.');
    if (dot2 > 0) wanted.push({ name: head, version: rest.slice(0, dot2), group: rest.slice(dot2 + 1) });
  }

  const byName = (r: ApiResource, n: string) => r.plural === n || r.singular === n || r.kind.toLowerCase() === n;
  const byShortName = (r: ApiResource, n: string) => r.shortNames.includes(n);
  for (const matches of [byName, byShortName]) {
    const hits = resources.filter((r) =>
      wanted.some((w) => matches(r, w.name) && (w.group === undefined || r.group === w.group) && (w.version === undefined || r.version === w.version)),
    );
    // Without an explicit version only the preferred version of a group counts.
    const versioned = hits.filter((r) => r.preferred || wanted.some((w) => w.version !== undefined && w.version === r.version && matches(r, w.name)));
    if (versioned.length > 0) return rankResources(resources, versioned);
    if (hits.length > 0) return rankResources(resources, hits);
  }
  return [];
}

function rankResources(all: ApiResource[], hits: ApiResource[]): ApiResource[] {
  const rank = (r: ApiResource) => (r.preferred ? 0 : 2) + (r.group === '' ? 0 : 1);
  return [...hits].sort((a, b) => rank(a) - rank(b) || all.indexOf(a) - all.indexOf(b));
}
