/**
 * Who is calling (bearer tokens) and what they may do (authorize). Tokens live in the store,
 * hashed with SHA-256, so every server sharing a store accepts the same tokens and a leaked
 * database does not leak credentials. `authorize` is the one place access is decided; RBAC
 * will grow there.
 */
import { createHash, randomBytes } from 'node:crypto';
import { storage } from '@vessel/api';
import type { Store } from '@vessel/store';
import { isStoreError } from '@vessel/store';
import { forbidden, qualified } from './errors.ts';

export interface User {
  name: string;
  groups: string[];
}

interface TokenRecord {
  user: string;
  groups: string[];
  created: string;
  description?: string;
}

const TOKEN_PREFIX = '/vessel/tokens/';
export const ADMIN_GROUP = 'system:masters';
/**
 * Tokens in this group may read (get, list, watch) everything but Secrets and change nothing,
 * as Kubernetes' `view` role; `vessel:view:<namespace>` is the same within one namespace
 * (`view` bound by a RoleBinding there).
 */
export const VIEW_GROUP = 'vessel:view';
export const NAMESPACE_VIEW_GROUP_PREFIX = 'vessel:view:';
/** Credentials: a viewer reading them could act as whoever they belong to. */
const HIDDEN_FROM_VIEWERS = new Set(['secrets']);

const hash = (token: string) => createHash('sha256').update(token).digest('hex');

export async function createToken(store: Store, user: string, groups: string[], description?: string): Promise<string> {
  const token = `vsl_${randomBytes(24).toString('base64url')}`;
  const record: TokenRecord = { user, groups, created: new Date().toISOString(), description };
  await store.create(TOKEN_PREFIX + hash(token), JSON.stringify(record));
  return token;
}

/**
 * Known tokens are remembered for a few seconds: otherwise every request costs a store read
 * (a linearizable etcd round trip). A revoked token therefore works for up to TOKEN_CACHE_MS.
 */
const TOKEN_CACHE_MS = 10_000;
const tokenCache = new WeakMap<Store, Map<string, { user: User; until: number }>>();

export async function authenticate(store: Store, header: string | undefined): Promise<User | undefined> {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m) return undefined;
  const key = hash(m[1]);
  let cache = tokenCache.get(store);
  if (!cache) tokenCache.set(store, (cache = new Map()));
  const hit = cache.get(key);
  if (hit && hit.until > Date.now()) return hit.user;
  try {
    const kv = await store.get(TOKEN_PREFIX + key);
    if (!kv) return undefined;
    const rec = JSON.parse(kv.value) as TokenRecord;
    const user = { name: rec.user, groups: rec.groups };
    if (cache.size > 10_000) cache.clear();
    cache.set(key, { user, until: Date.now() + TOKEN_CACHE_MS });
    return user;
  } catch (e) {
    if (isStoreError(e, 'NotFound')) return undefined;
    throw e;
  }
}

export interface Attributes {
  verb: string; // get, list, watch, create, update, patch, delete, deletecollection
  group: string;
  resource: string;
  subresource?: string;
  namespace?: string;
  name?: string;
}

const READ_VERBS = new Set(['get', 'list', 'watch']);

/**
 * A token in group `vessel:tenant:<namespace>` owns that namespace (every verb on what lives
 * in it), reads the golden images in vessel-images and the storage classes, and nothing else.
 */
export const TENANT_GROUP_PREFIX = 'vessel:tenant:';
const GOLDEN_READABLE = new Set(['datasources', 'datavolumes', 'persistentvolumeclaims']);
const CLUSTER_READABLE = new Set(['storageclasses']);

/**
 * Kinds a tenant reads but does not write in its own namespace:
 * - a NetworkAttachmentDefinition names a bridge on the nodes (any, the host's uplink included),
 *   so which ones a namespace's VMs may join is the cluster admin's choice, as the nodes'
 *   networks (NNCP) are;
 * - a VirtualMachineInstanceMigration is an infrastructure operation (drains, evacuations): a
 *   tenant that may create or delete them can fill the parallel-migration slots or cancel a
 *   drain's migrations (KubeVirt 1.5 took the same right from namespace admins);
 * - the migration toolkit's objects (forklift.konveyor.io) read providers' disks and write into
 *   whatever namespace a plan targets.
 */
const TENANT_READ_ONLY_GROUPS = new Set(['k8s.cni.cncf.io', 'forklift.konveyor.io']);
const TENANT_READ_ONLY_RESOURCES = new Set(['kubevirt.io/virtualmachineinstancemigrations']);
const tenantReadOnly = (attrs: Attributes) => TENANT_READ_ONLY_GROUPS.has(attrs.group) || TENANT_READ_ONLY_RESOURCES.has(`${attrs.group}/${attrs.resource}`);

function tenantAllows(namespaces: string[], attrs: Attributes): boolean {
  if (attrs.namespace && namespaces.includes(attrs.namespace)) return READ_VERBS.has(attrs.verb) || !tenantReadOnly(attrs);
  if (!READ_VERBS.has(attrs.verb)) return false;
  if (attrs.namespace === storage.GOLDEN_IMAGES_NAMESPACE && GOLDEN_READABLE.has(attrs.resource) && !attrs.subresource) return true;
  if (!attrs.namespace && attrs.resource === 'namespaces' && attrs.name && namespaces.includes(attrs.name)) return true;
  return !attrs.namespace && CLUSTER_READABLE.has(attrs.resource);
}

const VIEWABLE_SUBRESOURCES = new Set(['guestosinfo', 'userlist', 'filesystemlist']);

/** Throws a 403 Status unless `user` may do `attrs`. */
export function authorize(user: User, attrs: Attributes): void {
  if (user.groups.includes(ADMIN_GROUP)) return;
  // Viewers read objects; a console or VNC session is access to the guest, as in KubeVirt's view role.
  // What the guest agent reports about the guest is readable as the VMI is (KubeVirt's view role has it).
  const guestAccess = attrs.group === 'subresources.kubevirt.io' && !VIEWABLE_SUBRESOURCES.has(attrs.subresource ?? '');
  if (READ_VERBS.has(attrs.verb) && !guestAccess && !(attrs.group === '' && HIDDEN_FROM_VIEWERS.has(attrs.resource))) {
    if (user.groups.includes(VIEW_GROUP)) return;
    const viewed = user.groups.filter((g) => g.startsWith(NAMESPACE_VIEW_GROUP_PREFIX)).map((g) => g.slice(NAMESPACE_VIEW_GROUP_PREFIX.length));
    if (attrs.namespace && viewed.includes(attrs.namespace)) return;
    if (!attrs.namespace && attrs.resource === 'namespaces' && attrs.name && viewed.includes(attrs.name)) return;
  }
  const tenantOf = user.groups.filter((g) => g.startsWith(TENANT_GROUP_PREFIX)).map((g) => g.slice(TENANT_GROUP_PREFIX.length));
  if (tenantOf.length && tenantAllows(tenantOf, attrs)) return;
  const res = attrs.subresource ? `${attrs.resource}/${attrs.subresource}` : attrs.resource;
  const where = attrs.namespace ? ` in the namespace "${attrs.namespace}"` : ' at the cluster scope';
  throw forbidden(
    `${qualified(attrs.resource, attrs.group)}${attrs.name ? ` "${attrs.name}"` : ''} is forbidden: User "${user.name}" cannot ${attrs.verb} resource "${res}" in API group "${attrs.group}"${where}`,
  );
}
