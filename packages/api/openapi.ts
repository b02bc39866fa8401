/**
 * The OpenAPI documents the API server serves, shaped like kube-apiserver's so kubectl 1.32 works:
 *  - /openapi/v3 (openApiV3Index) lists one document per group/version with a content hash;
 *  - /openapi/v3/apis/<g>/<v> (openApiV3) has components.schemas carrying
 *    x-kubernetes-group-version-kind, and `paths` whose operations carry it too. `kubectl explain`
 *    finds the GVK from the resource's path operations, then the schema with that GVK;
 *    kubectl's field-validation check looks for a PATCH operation with the GVK and a
 *    `fieldValidation` query parameter (else it falls back to client-side validation);
 *  - /openapi/v2 (openApiV2): Swagger 2.0 with the same definitions, for older clients and
 *    `kubectl explain --output=plaintext-openapiv2`.
 * Documents are built once per group/version and cached; callers must not mutate them.
 */
import { createHash } from 'node:crypto';
import { groupVersions, schemaNameFor, servedKinds } from './kinds.ts';
import { INT_OR_STRING, QUANTITY, upstreamSchemas, type Json, type JsonSchema } from './schemas.ts';
import type { KindInfo } from './types.ts';

export type OpenApiDocument = { [k: string]: Json };

const REF_V3 = '#/components/schemas/';
const META = 'io.k8s.apimachinery.pkg.apis.meta.v1';
const STATUS = `${META}.Status`;
const DELETE_OPTIONS = `${META}.DeleteOptions`;
const WATCH_EVENT = `${META}.WatchEvent`;
const PATCH = `${META}.Patch`;

const PATCH_SCHEMA: JsonSchema = {
  description: 'Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.',
  type: 'object',
};

type Gvk = { group: string; version: string; kind: string };

function gvkOf(info: KindInfo, kind = info.kind): Gvk {
  return { group: info.group, kind, version: info.version };
}

function ref(name: string): JsonSchema {
  return { $ref: REF_V3 + name };
}

/** All schema names reachable from `roots` through $refs. */
function reachable(roots: string[]): string[] {
  const all = upstreamSchemas();
  const seen = new Set<string>();
  const stack = [...roots];
  const visit = (v: Json): void => {
    if (Array.isArray(v)) v.forEach(visit);
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (k === '$ref' && typeof x === 'string' && x.startsWith(REF_V3)) stack.push(x.slice(REF_V3.length));
        else visit(x);
      }
    }
  };
  while (stack.length > 0) {
    const n = stack.pop()!;
    if (seen.has(n) || !all[n]) continue;
    seen.add(n);
    visit(all[n]);
  }
  return [...seen].sort();
}

// ---- parameters ------------------------------------------------------------------------------

function queryParam(name: string, description: string, type: 'string' | 'boolean' | 'integer' = 'string'): JsonSchema {
  return { name, in: 'query', description, schema: { type, uniqueItems: true } };
}

const P = {
  pretty: queryParam('pretty', "If 'true', then the output is pretty printed."),
  dryRun: queryParam(
    'dryRun',
    'When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed',
  ),
  fieldManager: queryParam('fieldManager', 'fieldManager is a name associated with the actor or entity that is making these changes.'),
  fieldValidation: queryParam(
    'fieldValidation',
    'fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: unknown fields are dropped silently. - Warn: unknown fields are dropped and a warning is returned for each one. - Strict: the request fails with BadRequest on unknown fields. kubectl sends Strict by default.',
  ),
  force: queryParam(
    'force',
    'Force is going to "force" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.',
    'boolean',
  ),
  gracePeriodSeconds: queryParam('gracePeriodSeconds', 'The duration in seconds before the object should be deleted.', 'integer'),
  propagationPolicy: queryParam('propagationPolicy', "Whether and how garbage collection will be performed: 'Orphan', 'Background' or 'Foreground'."),
  allowWatchBookmarks: queryParam('allowWatchBookmarks', 'allowWatchBookmarks requests watch events with type "BOOKMARK".', 'boolean'),
  continue: queryParam('continue', 'The continue option should be set when retrieving more results from the server.'),
  fieldSelector: queryParam('fieldSelector', 'A selector to restrict the list of returned objects by their fields. Defaults to everything.'),
  labelSelector: queryParam('labelSelector', 'A selector to restrict the list of returned objects by their labels. Defaults to everything.'),
  limit: queryParam('limit', 'limit is a maximum number of responses to return for a list call.', 'integer'),
  resourceVersion: queryParam('resourceVersion', 'resourceVersion sets a constraint on what resource versions a request may be served from.'),
  resourceVersionMatch: queryParam('resourceVersionMatch', 'resourceVersionMatch determines how resourceVersion is applied to list calls.'),
  sendInitialEvents: queryParam('sendInitialEvents', 'sendInitialEvents=true may be set together with watch=true.', 'boolean'),
  timeoutSeconds: queryParam('timeoutSeconds', 'Timeout for the list/watch call.', 'integer'),
  watch: queryParam('watch', 'Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.', 'boolean'),
  name: (kind: string): JsonSchema => ({
    name: 'name',
    in: 'path',
    description: `name of the ${kind}`,
    required: true,
    schema: { type: 'string', uniqueItems: true },
  }),
  namespace: {
    name: 'namespace',
    in: 'path',
    description: 'object name and auth scope, such as for teams and projects',
    required: true,
    schema: { type: 'string', uniqueItems: true },
  } as JsonSchema,
};

const LIST_PARAMS = [
  P.allowWatchBookmarks,
  P.continue,
  P.fieldSelector,
  P.labelSelector,
  P.limit,
  P.resourceVersion,
  P.resourceVersionMatch,
  P.sendInitialEvents,
  P.timeoutSeconds,
  P.watch,
];
const WRITE_PARAMS = [P.dryRun, P.fieldManager, P.fieldValidation];

function content(schema: JsonSchema, types = ['application/json', 'application/yaml']): JsonSchema {
  const c: JsonSchema = {};
  for (const t of types) c[t] = { schema };
  return c;
}

function patchTypes(info: KindInfo): string[] {
  // Like kube-apiserver: strategic merge patch only for built-in kinds, not for custom resources.
  const builtin = info.group === '' || info.group.endsWith('.k8s.io');
  return [
    'application/apply-patch+yaml',
    'application/json-patch+json',
    'application/merge-patch+json',
    ...(builtin ? ['application/strategic-merge-patch+json'] : []),
  ];
}

// ---- paths -----------------------------------------------------------------------------------

function opId(verb: string, info: KindInfo, namespaced: boolean, suffix = ''): string {
  const g = info.group
    ? info.group
        .split('.')
        .map((w) => w[0].toUpperCase() + w.slice(1))
        .join('')
    : 'Core';
  const v = info.version[0].toUpperCase() + info.version.slice(1);
  return `${verb}${g}${v}${namespaced ? 'Namespaced' : ''}${info.kind}${suffix}`;
}

function op(
  info: KindInfo,
  action: string,
  verbId: string,
  namespacedOp: boolean,
  description: string,
  params: JsonSchema[],
  responses: JsonSchema,
  requestBody?: JsonSchema,
  suffix = '',
): JsonSchema {
  const o: JsonSchema = {
    tags: [info.group ? `${info.group.replace(/\./g, '')}_${info.version}` : `core_${info.version}`],
    description,
    operationId: opId(verbId, info, namespacedOp, suffix),
  };
  if (params.length) o.parameters = params;
  if (requestBody) o.requestBody = requestBody;
  o.responses = { ...responses, '401': { description: 'Unauthorized' } };
  o['x-kubernetes-action'] = action;
  o['x-kubernetes-group-version-kind'] = gvkOf(info);
  return o;
}

function ok(schemaName: string, code = '200'): JsonSchema {
  return { [code]: { description: code === '201' ? 'Created' : 'OK', content: content(ref(schemaName), ['application/json', 'application/yaml']) } };
}

function pathsFor(info: KindInfo): Record<string, JsonSchema> {
  const schema = schemaNameFor(info);
  const list = `${schema}List`;
  const prefix = info.group ? `/apis/${info.group}/${info.version}` : `/api/${info.version}`;
  const ns = info.namespaced;
  const collection = ns ? `${prefix}/namespaces/{namespace}/${info.plural}` : `${prefix}/${info.plural}`;
  const scopeParams = ns ? [P.namespace, P.pretty] : [P.pretty];
  const body = (s: string): JsonSchema => ({ content: content(ref(s)), required: true });
  const paths: Record<string, JsonSchema> = {};

  paths[collection] = {
    get: op(info, 'list', 'list', ns, `list or watch objects of kind ${info.kind}`, LIST_PARAMS, ok(list)),
    post: op(
      info,
      'post',
      'create',
      ns,
      `create a ${info.kind}`,
      WRITE_PARAMS,
      { ...ok(schema), ...ok(schema, '201'), '202': { description: 'Accepted', content: content(ref(schema)) } },
      body(schema),
    ),
    delete: op(
      info,
      'deletecollection',
      'deletecollection',
      ns,
      `delete collection of ${info.kind}`,
      [...LIST_PARAMS.filter((p) => p.name !== 'watch' && p.name !== 'allowWatchBookmarks'), P.dryRun, P.gracePeriodSeconds, P.propagationPolicy],
      ok(STATUS),
      { content: content(ref(DELETE_OPTIONS)) },
    ),
    parameters: scopeParams,
  };
  const item = `${collection}/{name}`;
  const patchBody: JsonSchema = { content: content(ref(PATCH), patchTypes(info)), required: true };
  paths[item] = {
    get: op(info, 'get', 'read', ns, `read the specified ${info.kind}`, [], ok(schema)),
    put: op(info, 'put', 'replace', ns, `replace the specified ${info.kind}`, WRITE_PARAMS, { ...ok(schema), ...ok(schema, '201') }, body(schema)),
    patch: op(
      info,
      'patch',
      'patch',
      ns,
      `partially update the specified ${info.kind}`,
      [...WRITE_PARAMS, P.force],
      { ...ok(schema), ...ok(schema, '201') },
      patchBody,
    ),
    delete: op(
      info,
      'delete',
      'delete',
      ns,
      `delete a ${info.kind}`,
      [P.dryRun, P.gracePeriodSeconds, P.propagationPolicy],
      { ...ok(STATUS), '202': { description: 'Accepted', content: content(ref(STATUS)) } },
      { content: content(ref(DELETE_OPTIONS)) },
    ),
    parameters: [P.name(info.kind), ...scopeParams],
  };
  if (info.statusSubresource) {
    paths[`${item}/status`] = {
      get: op(info, 'get', 'read', ns, `read status of the specified ${info.kind}`, [], ok(schema), undefined, 'Status'),
      put: op(
        info,
        'put',
        'replace',
        ns,
        `replace status of the specified ${info.kind}`,
        WRITE_PARAMS,
        { ...ok(schema), ...ok(schema, '201') },
        body(schema),
        'Status',
      ),
      patch: op(
        info,
        'patch',
        'patch',
        ns,
        `partially update status of the specified ${info.kind}`,
        [...WRITE_PARAMS, P.force],
        { ...ok(schema), ...ok(schema, '201') },
        patchBody,
        'Status',
      ),
      parameters: [P.name(info.kind), ...scopeParams],
    };
  }
  if (ns) {
    paths[`${prefix}/${info.plural}`] = {
      get: op(info, 'list', 'list', false, `list or watch objects of kind ${info.kind}`, LIST_PARAMS, ok(list), undefined, 'ForAllNamespaces'),
      parameters: [P.pretty],
    };
  }
  return paths;
}

// ---- documents -------------------------------------------------------------------------------

function kindsOf(group: string, version: string): KindInfo[] {
  return servedKinds.filter((k) => k.group === group && k.version === version);
}

function buildV3(group: string, version: string): OpenApiDocument | undefined {
  const served = kindsOf(group, version);
  if (served.length === 0) return undefined;
  const all = upstreamSchemas();
  const roots = served.flatMap((k) => [schemaNameFor(k), `${schemaNameFor(k)}List`]);
  const names = reachable([...roots, STATUS, DELETE_OPTIONS, WATCH_EVENT]);
  const schemas: Record<string, Json> = {};
  const gvks = new Map<string, Gvk[]>();
  for (const k of served) {
    gvks.set(schemaNameFor(k), [gvkOf(k)]);
    gvks.set(`${schemaNameFor(k)}List`, [gvkOf(k, k.listKind)]);
  }
  // Like kube-apiserver, the meta types carry the GVK of every group they are served in.
  for (const [n, kind] of [
    [STATUS, 'Status'],
    [DELETE_OPTIONS, 'DeleteOptions'],
    [WATCH_EVENT, 'WatchEvent'],
  ] as const) {
    gvks.set(n, [{ group, kind, version }]);
  }
  for (const n of [...names, PATCH].sort()) {
    const base = n === PATCH ? PATCH_SCHEMA : all[n];
    const gvk = gvks.get(n);
    schemas[n] = gvk ? { ...base, 'x-kubernetes-group-version-kind': gvk } : base;
  }
  const paths: Record<string, Json> = {};
  for (const k of served) Object.assign(paths, pathsFor(k));
  return {
    openapi: '3.0.0',
    info: { title: 'Vessel', version: group ? `${group}/${version}` : version },
    paths,
    components: { schemas },
  };
}

interface Cached {
  doc: OpenApiDocument;
  hash: string;
}
const v3Cache = new Map<string, Cached | null>();

function cachedV3(group: string, version: string): Cached | null {
  const key = `${group}/${version}`;
  let c = v3Cache.get(key);
  if (c === undefined) {
    const doc = buildV3(group, version);
    c = doc ? { doc, hash: createHash('sha512').update(JSON.stringify(doc)).digest('hex').toUpperCase() } : null;
    v3Cache.set(key, c);
  }
  return c;
}

/** The OpenAPI 3.0 document of a group/version ('' group for the core "api/v1"), or undefined when not served. */
export function openApiV3(group: string, version: string): OpenApiDocument | undefined {
  return cachedV3(group, version)?.doc;
}

/** The document's path under /openapi/v3/ ("api/v1", "apis/kubevirt.io/v1"). */
export function openApiV3Path(group: string, version: string): string {
  return group ? `apis/${group}/${version}` : `api/${version}`;
}

/** A content hash of the group/version document (kubectl caches documents by URL, hash included). */
export function openApiV3Hash(group: string, version: string): string | undefined {
  return cachedV3(group, version)?.hash;
}

/** The /openapi/v3 discovery document: {paths: {"api/v1": {serverRelativeURL: "/openapi/v3/api/v1?hash=..."}, ...}}. */
export function openApiV3Index(): { paths: Record<string, { serverRelativeURL: string }> } {
  const paths: Record<string, { serverRelativeURL: string }> = {};
  for (const { group, version } of groupVersions()) {
    const p = openApiV3Path(group, version);
    paths[p] = { serverRelativeURL: `/openapi/v3/${p}?hash=${openApiV3Hash(group, version)}` };
  }
  return { paths };
}

// ---- Swagger 2.0 -----------------------------------------------------------------------------

/** Rewrites a v3 schema for Swagger 2.0: #/definitions refs, $ref with siblings, no oneOf. */
function toV2(v: Json): Json {
  if (Array.isArray(v)) return v.map(toV2);
  if (!v || typeof v !== 'object') return v;
  if (typeof v.$ref === 'string') return { $ref: v.$ref.replace(REF_V3, '#/definitions/') };
  const allOf = v.allOf;
  if (Array.isArray(allOf) && allOf.length === 1 && allOf[0] && typeof allOf[0] === 'object' && !Array.isArray(allOf[0]) && typeof allOf[0].$ref === 'string') {
    const { allOf: _a, ...rest } = v;
    return { ...(toV2(rest) as JsonSchema), $ref: allOf[0].$ref.replace(REF_V3, '#/definitions/') };
  }
  const out: JsonSchema = {};
  for (const [k, x] of Object.entries(v)) out[k] = toV2(x);
  return out;
}

function v2Params(params: Json): Json {
  if (!Array.isArray(params)) return params;
  return params.map((p) => {
    if (!p || typeof p !== 'object' || Array.isArray(p)) return p;
    const { schema, ...rest } = p;
    const type = schema && typeof schema === 'object' && !Array.isArray(schema) ? schema.type : 'string';
    return { ...rest, type: type ?? 'string', uniqueItems: true };
  });
}

function v2Operation(o: JsonSchema): JsonSchema {
  const { requestBody, responses, parameters, ...rest } = o;
  const params = (v2Params(parameters ?? []) as Json[]).slice();
  let consumes: Json = ['*/*'];
  if (requestBody && typeof requestBody === 'object' && !Array.isArray(requestBody)) {
    const c = requestBody.content as Record<string, JsonSchema>;
    const types = Object.keys(c);
    consumes = types;
    params.push({ name: 'body', in: 'body', required: requestBody.required === true, schema: toV2(c[types[0]].schema) });
  }
  const r: JsonSchema = {};
  for (const [code, resp] of Object.entries((responses ?? {}) as Record<string, JsonSchema>)) {
    const c = resp.content as Record<string, JsonSchema> | undefined;
    r[code] = c ? { description: resp.description, schema: toV2(c['application/json'].schema) } : { description: resp.description };
  }
  const out: JsonSchema = { ...rest, consumes, produces: ['application/json', 'application/yaml'], schemes: ['https'], responses: r };
  if (params.length) out.parameters = params;
  return out;
}

let v2Cache: OpenApiDocument | undefined;

/** Swagger 2.0 for all served kinds: definitions named like "io.kubevirt.v1.VirtualMachine" with GVKs. */
export function openApiV2(): OpenApiDocument {
  if (v2Cache) return v2Cache;
  const definitions: Record<string, Json> = {};
  const paths: Record<string, Json> = {};
  for (const { group, version } of groupVersions()) {
    const doc = openApiV3(group, version)!;
    const schemas = (doc.components as { schemas: Record<string, JsonSchema> }).schemas;
    for (const [n, s] of Object.entries(schemas)) {
      let conv = toV2(s) as JsonSchema;
      if (n === QUANTITY) conv = { description: s.description, type: 'string', format: 'quantity' };
      if (n === INT_OR_STRING) conv = { description: s.description, type: 'string', format: 'int-or-string' };
      const prev = definitions[n] as JsonSchema | undefined;
      const prevGvk = prev?.['x-kubernetes-group-version-kind'];
      const gvk = conv['x-kubernetes-group-version-kind'];
      if (Array.isArray(prevGvk) && Array.isArray(gvk)) conv = { ...conv, 'x-kubernetes-group-version-kind': [...prevGvk, ...gvk] };
      definitions[n] = conv;
    }
    for (const [p, item] of Object.entries(doc.paths as Record<string, JsonSchema>)) {
      const out: JsonSchema = {};
      for (const [m, o] of Object.entries(item)) out[m] = m === 'parameters' ? v2Params(o) : v2Operation(o as JsonSchema);
      paths[p] = out;
    }
  }
  const sorted: Record<string, Json> = {};
  for (const n of Object.keys(definitions).sort()) sorted[n] = definitions[n];
  v2Cache = { swagger: '2.0', info: { title: 'Vessel', version: 'v1' }, paths, definitions: sorted };
  return v2Cache;
}
