/**
 * The HTTPS front: routes Kubernetes REST paths to discovery, OpenAPI and the generic
 * resource handlers, authenticates and authorizes every request, and answers every failure
 * with a Status. No framework: the paths are Kubernetes', and watches need the raw response.
 */
import { createServer as createHttpsServer } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import YAML from 'yaml';
import { findByResource, openApiV3, openApiV3Index, openApiV2 } from '@vessel/api';
import type { KindInfo } from '@vessel/api';
import type { Store } from '@vessel/store';
import { authenticate, authorize, createToken, type User } from './auth.ts';
import { admit } from './admission.ts';
import { apiGroupDoc, apiGroupList, apiResourceList, apiVersions, serverVersion } from './discovery.ts';
import { ApiError, badRequest, invalid, methodNotAllowed, toApiError, tooLarge, unauthorized, unsupportedMediaType } from './errors.ts';
import { MAX_NESTING_DEPTH, patchTypeOf } from './patch.ts';
import { decodeProtobufObject, PROTOBUF_CONTENT_TYPE, ProtobufError, UnsupportedProtobufKind } from './protobuf.ts';
import { Resources, type DeleteOptions, type WriteOptions } from './resources.ts';
import { encodeOpenApiV2, OPENAPI_V2_PROTOBUF_REPLY, OPENAPI_V2_PROTOBUF_TYPES } from './openapi-proto.ts';
import { parseBool, parseResourceVersion, waitForRevision } from './query.ts';
import { parseFieldSelector, parseLabelSelector } from './selectors.ts';
import { toTable, wantsTable } from './table.ts';
import { serveWatch } from './watch.ts';
import { WatchCaches } from './watch-cache.ts';
import { BODY_ACTIONS, runAction, SUBRESOURCE_PATH } from './subresources.ts';
import { issueUploadToken, proxyUpload, TOKEN_REQUEST_PATH, UPLOAD_PATHS } from './upload.ts';
import { serialLog } from './console.ts';

/** Kubernetes' own limit for a request body. */
export const MAX_BODY_BYTES = 3 * 1024 * 1024;

export interface HandlerOptions {
  store: Store;
  /** host:port clients reach the server at (for /api's serverAddressByClientCIDRs). */
  serverAddress: string;
  bookmarkIntervalMs: number;
  log?: (line: string) => void;
}

/** A parsed resource path: /api/v1/namespaces/ns/plural/name/sub or /apis/g/v/... */
export interface ResourcePath {
  info: KindInfo;
  namespace?: string;
  name?: string;
  subresource?: string;
  watchPath: boolean;
}

class Request {
  constructor(readonly req: IncomingMessage, readonly url: URL) {}
  q(name: string): string | undefined { return this.url.searchParams.get(name) ?? undefined; }
}

export function parseResourcePath(pathname: string): ResourcePath | undefined {
  const segs = pathname.split('/').filter((s) => s !== '').map(decodeURIComponent);
  let group: string, version: string, rest: string[];
  if (segs[0] === 'api' && segs.length >= 3) { group = ''; version = segs[1]; rest = segs.slice(2); }
  else if (segs[0] === 'apis' && segs.length >= 4) { group = segs[1]; version = segs[2]; rest = segs.slice(3); }
  else return undefined;
  let watchPath = false;
  if (rest[0] === 'watch') { watchPath = true; rest = rest.slice(1); }
  let namespace: string | undefined;
  if (rest[0] === 'namespaces' && rest.length >= 3) {
    const inner = findByResource(group, version, rest[2]);
    if (inner?.namespaced) { namespace = rest[1]; rest = rest.slice(2); }
  }
  const info = findByResource(group, version, rest[0]);
  if (!info || rest.length > 3) return undefined;
  if (!info.namespaced && namespace) return undefined;
  return { info, namespace, name: rest[1], subresource: rest[2], watchPath };
}

export interface Handler {
  (req: IncomingMessage, res: ServerResponse): Promise<void>;
  /** Ends the shared store watches behind HTTP watches. */
  close(): Promise<void>;
}

export function createHandler(opts: HandlerOptions): Handler {
  const resources = new Resources(opts.store);
  const caches = new WatchCaches(opts.store);
  let v2Protobuf: Buffer | undefined;

  const handle = async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = Date.now();
    const url = new URL(req.url ?? '/', 'https://vessel');
    const r = new Request(req, url);
    try {
      await route(r, res);
    } catch (e) {
      const err = toApiError(e);
      if (err.code >= 500) opts.log?.(`error ${req.method} ${url.pathname}: ${e instanceof Error ? e.stack : e}`);
      if (!res.headersSent) sendJson(res, err.code, err.toStatus());
      else if (!res.writableEnded) res.end();
    } finally {
      opts.log?.(`${req.method} ${url.pathname}${url.search} ${res.statusCode} ${Date.now() - started}ms`);
    }
  };
  return Object.assign(handle, { close: () => caches.close() });

  async function route(r: Request, res: ServerResponse): Promise<void> {
    const p = r.url.pathname.replace(/\/+$/, '') || '/';
    const method = r.req.method ?? 'GET';
    if (['/healthz', '/livez', '/readyz'].includes(p)) { res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok'); return; }
    if (p === '/version') return sendJson(res, 200, serverVersion);
    // Upload tokens authenticate uploads (CDI's upload proxy), not users.
    if (UPLOAD_PATHS.includes(p)) {
      if (method !== 'POST' && method !== 'PUT' && method !== 'HEAD') throw methodNotAllowed(method, p);
      return proxyUpload(resources, r.req, res, p);
    }

    const user = await authenticate(opts.store, r.req.headers.authorization);
    if (!user) throw unauthorized();
    if (await serialLog({ store: opts.store, resources })(r.req, res, p)) return;

    if (p === '/vessel/v1/tokens' && method === 'POST') return issueToken(r, res, user);
    const action = SUBRESOURCE_PATH.exec(p);
    if (action) {
      if (method !== 'PUT') throw methodNotAllowed(method, p);
      const [ns, resource, name, verb] = action.slice(1).map(decodeURIComponent);
      // addvolume / removevolume carry their options as JSON (read once authorized); the others need no body.
      const body = BODY_ACTIONS.has(verb) ? async () => parseBody(await readBody(r.req), r.req.headers['content-type']) : undefined;
      if (!body) r.req.resume();
      res.writeHead(await runAction(resources, user, ns, resource, name, verb, body)).end();
      return;
    }
    const tokenRequest = TOKEN_REQUEST_PATH.exec(p);
    if (tokenRequest && method === 'POST') {
      return sendJson(res, 201, await issueUploadToken(resources, user, decodeURIComponent(tokenRequest[1]), parseBody(await readBody(r.req), r.req.headers['content-type'])));
    }
    if (method === 'GET') {
      if (p === '/openapi/v2' && OPENAPI_V2_PROTOBUF_TYPES.some((t) => accepts(r.req.headers.accept, t))) {
        // client-go's discovery reads OpenAPI v2 only as protobuf (kubectl apply of a kind not in v3 needs it).
        v2Protobuf ??= encodeOpenApiV2(openApiV2() as Record<string, unknown>);
        res.writeHead(200, { 'Content-Type': OPENAPI_V2_PROTOBUF_REPLY, 'Content-Length': String(v2Protobuf.length) }).end(v2Protobuf);
        return;
      }
      if (p.startsWith('/openapi/') && !acceptsJson(r.req.headers.accept)) {
        throw new ApiError(406, 'NotAcceptable', 'only application/json is served here (and protobuf for /openapi/v2)');
      }
      const doc = discoveryDoc(p);
      if (doc !== undefined) {
        if (doc === null) throw new ApiError(404, 'NotFound', `the server could not find the requested resource (${p})`);
        return sendJson(res, 200, doc);
      }
    }
    const rp = parseResourcePath(p);
    if (!rp) throw new ApiError(404, 'NotFound', `the server could not find the requested resource (${method} ${p})`);
    await serveResource(r, res, rp, user, method);
  }

  /** `vessel token create`: admins issue tokens; the token is shown once and stored hashed. */
  async function issueToken(r: Request, res: ServerResponse, user: User): Promise<void> {
    authorize(user, { verb: 'create', group: 'vessel.io', resource: 'tokens' });
    const body = parseBody(await readBody(r.req), r.req.headers['content-type']) as { user?: unknown; groups?: unknown; description?: unknown };
    const causes = [];
    if (typeof body.user !== 'string' || !/^[A-Za-z0-9:@._-]{1,253}$/.test(body.user)) causes.push({ reason: 'FieldValueInvalid', field: 'user', message: 'must be a user name of letters, digits and :@._-' });
    if (body.groups !== undefined && !(Array.isArray(body.groups) && body.groups.every((g) => typeof g === 'string'))) causes.push({ reason: 'FieldValueInvalid', field: 'groups', message: 'must be a list of group names' });
    if (causes.length) throw new ApiError(422, 'Invalid', `token request is invalid: ${causes.map((c) => `${c.field}: ${c.message}`).join(', ')}`, { kind: 'Token', group: 'vessel.io', causes });
    const groups = (body.groups as string[] | undefined) ?? [];
    const token = await createToken(opts.store, body.user as string, groups, typeof body.description === 'string' ? body.description : undefined);
    return sendJson(res, 201, { kind: 'Token', apiVersion: 'vessel.io/v1', user: body.user, groups, token });
  }

  /** Discovery and OpenAPI documents; undefined when the path is not one, null when unknown. */
  function discoveryDoc(p: string): unknown {
    if (p === '/api') return apiVersions(opts.serverAddress);
    if (p === '/apis') return apiGroupList();
    if (p === '/api/v1') return apiResourceList('', 'v1') ?? null;
    if (p === '/openapi/v2') return openApiV2();  // JSON only: see acceptsJson in route()
    if (p === '/openapi/v3') return openApiV3Index();
    let m = /^\/openapi\/v3\/api\/(v1)$/.exec(p);
    if (m) return openApiV3('', m[1]) ?? null;
    m = /^\/openapi\/v3\/apis\/([^/]+)\/([^/]+)$/.exec(p);
    if (m) return openApiV3(m[1], m[2]) ?? null;
    m = /^\/apis\/([^/]+)$/.exec(p);
    if (m) return apiGroupDoc(m[1]) ?? null;
    m = /^\/apis\/([^/]+)\/([^/]+)$/.exec(p);
    if (m) return apiResourceList(m[1], m[2]) ?? null;
    return undefined;
  }

  async function serveResource(r: Request, res: ServerResponse, rp: ResourcePath, user: User, method: string): Promise<void> {
    const { info, namespace, name, subresource } = rp;
    if (info.namespaced && name !== undefined && namespace === undefined) {
      throw new ApiError(404, 'NotFound', `the server could not find the requested resource: ${info.plural} are namespaced; use /namespaces/<namespace>/${info.plural}/${name}`);
    }
    const watch = rp.watchPath || parseBool('watch', r.q('watch')) === true;
    const verb = verbOf(method, name, watch);
    if (!verb) throw methodNotAllowed(method, r.url.pathname);
    authorize(user, { verb, group: info.group, resource: info.plural, subresource, namespace, name });
    const labels = parseLabelSelector(r.q('labelSelector'));
    const fields = parseFieldSelector(r.q('fieldSelector'));
    const write: WriteOptions = {
      dryRun: parseDryRun(r.q('dryRun')), fieldManager: r.q('fieldManager'), fieldValidation: parseFieldValidation(r.q('fieldValidation')),
      force: parseForce(r.q('force')), userAgent: r.req.headers['user-agent'],
      admit: (obj) => admit(user, resources, info, obj),
    };
    const table = wantsTable(r.req.headers.accept);
    const includeObject = r.q('includeObject');
    const rv = parseResourceVersion(r.q('resourceVersion'));

    switch (verb) {
      case 'get': {
        if (subresource && subresource !== 'status') throw new ApiError(404, 'NotFound', `${info.plural} has no subresource "${subresource}"`);
        // A get at resourceVersion N answers with state at least that new.
        if (rv) await waitForRevision(opts.store, rv);
        const obj = await resources.get(info, namespace, name!);
        return sendJson(res, 200, table ? toTable(info, [obj], { resourceVersion: obj.metadata.resourceVersion }, includeObject) : obj);
      }
      case 'list': {
        const limit = r.q('limit') ? Number(r.q('limit')) : undefined;
        if (limit !== undefined && (!Number.isInteger(limit) || limit < 0)) throw badRequest(`invalid limit "${r.q('limit')}": it must be a non-negative integer`);
        const continueToken = r.q('continue') || undefined;
        const match = r.q('resourceVersionMatch') || undefined;
        // Kubernetes' ListOptions validation, a 422 like theirs.
        const listCause = (field: string, reason: string, message: string) => invalid('ListOptions', 'meta.k8s.io', '', [{ reason, field, message }]);
        if (match !== undefined && match !== 'Exact' && match !== 'NotOlderThan') throw listCause('resourceVersionMatch', 'FieldValueNotSupported', `Unsupported value: "${match}": supported values: "Exact", "NotOlderThan"`);
        if (match !== undefined && rv === undefined) throw listCause('resourceVersionMatch', 'FieldValueForbidden', 'Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided');
        if (match === 'Exact' && rv === 0) throw listCause('resourceVersionMatch', 'FieldValueForbidden', 'Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0"');
        if (continueToken && rv) throw listCause('resourceVersion', 'FieldValueForbidden', 'Forbidden: specifying resource version is not allowed when using continue');
        // Kubernetes' list semantics: a limit with a resourceVersion (and no match) reads at exactly that revision.
        const exact = !!rv && (match === 'Exact' || (match === undefined && limit !== undefined && limit > 0));
        if (rv) await waitForRevision(opts.store, rv);
        const page = await resources.list(info, namespace, { labels, fields, limit, continueToken, revision: exact ? rv : undefined });
        const meta = { resourceVersion: String(page.revision), ...(page.continueToken ? { continue: page.continueToken } : {}) };
        if (table) return sendJson(res, 200, toTable(info, page.items, meta, includeObject));
        return sendJson(res, 200, { apiVersion: info.group ? `${info.group}/${info.version}` : info.version, kind: info.listKind, metadata: meta, items: page.items });
      }
      case 'watch': {
        const timeout = r.q('timeoutSeconds');
        if (rv) await waitForRevision(opts.store, rv);
        return serveWatch(opts.store, caches, res, {
          info, namespace, resourceVersion: r.q('resourceVersion'), labels,
          fields: name ? combine(fields, (o) => (o.metadata as { name?: string }).name === name) : fields,
          allowBookmarks: parseBool('allowWatchBookmarks', r.q('allowWatchBookmarks')) ?? false,
          sendInitialEvents: parseBool('sendInitialEvents', r.q('sendInitialEvents')) ?? false,
          timeoutSeconds: timeout !== undefined && /^\d+$/.test(timeout) ? Number(timeout) : undefined,
          table, includeObject, bookmarkIntervalMs: opts.bookmarkIntervalMs,
        });
      }
      case 'create': {
        if (subresource) throw methodNotAllowed(method, r.url.pathname);
        const w = await resources.create(info, namespace, parseBody(await readBody(r.req), r.req.headers['content-type']), write);
        return sendJson(res, 201, w.object, w.warnings);
      }
      case 'update': {
        const w = await resources.update(info, namespace, name!, parseBody(await readBody(r.req), r.req.headers['content-type']), subresource, write);
        return sendJson(res, 200, w.object, w.warnings);
      }
      case 'patch': {
        const type = patchTypeOf(r.req.headers['content-type']);
        const w = await resources.patch(info, namespace, name!, type, await readBody(r.req), subresource, write);
        return sendJson(res, 200, w.object, w.warnings);
      }
      case 'delete': {
        if (subresource) throw methodNotAllowed(method, r.url.pathname);
        const d = await resources.delete(info, namespace, name!, deleteOptions(r, await readBody(r.req)));
        return sendJson(res, d.pending ? 202 : 200, d.object);
      }
      case 'deletecollection': {
        const options = deleteOptions(r, await readBody(r.req));
        const page = await resources.list(info, namespace, { labels, fields });
        const items = [];
        for (const o of page.items) {
          try { items.push((await resources.delete(info, o.metadata.namespace, o.metadata.name, options)).object); }
          catch (e) { if (!(e instanceof ApiError && e.code === 404)) throw e; }
        }
        return sendJson(res, 200, { apiVersion: info.group ? `${info.group}/${info.version}` : info.version, kind: info.listKind, metadata: {}, items });
      }
    }
  }
}

function accepts(accept: string | undefined, type: string): boolean {
  return !!accept && accept.split(',').some((a) => a.split(';')[0].trim() === type);
}

function acceptsJson(accept: string | undefined): boolean {
  return !accept || accept.split(',').some((a) => /^\s*(application\/json|\*\/\*|application\/\*)/.test(a));
}

function verbOf(method: string, name: string | undefined, watch: boolean): string | undefined {
  switch (method) {
    case 'GET': return watch ? 'watch' : name === undefined ? 'list' : 'get';
    case 'POST': return name === undefined ? 'create' : undefined;
    case 'PUT': return name === undefined ? undefined : 'update';
    case 'PATCH': return name === undefined ? undefined : 'patch';
    case 'DELETE': return name === undefined ? 'deletecollection' : 'delete';
    default: return undefined;
  }
}

function combine(a: ((o: Record<string, unknown>) => boolean) | undefined, b: (o: Record<string, unknown>) => boolean) {
  return a ? (o: Record<string, unknown>) => a(o) && b(o) : b;
}

function parseDryRun(v: string | undefined): boolean {
  if (v === undefined || v === '') return false;
  if (v === 'All') return true;
  throw badRequest(`invalid dryRun "${v}": the only accepted value is "All"`);
}

function parseForce(v: string | undefined): boolean {
  if (v === undefined || v === '' || v === 'false') return false;
  if (v === 'true') return true;
  throw badRequest(`invalid force "${v}": use true or false`);
}

function parseFieldValidation(v: string | undefined): WriteOptions['fieldValidation'] {
  if (v === undefined || v === '') return undefined;
  if (v === 'Strict' || v === 'Warn' || v === 'Ignore') return v;
  throw badRequest(`invalid fieldValidation "${v}": use Strict, Warn or Ignore`);
}

function deleteOptions(r: Request, body: string): DeleteOptions {
  const parsed = body.trim() ? parseBody(body, r.req.headers['content-type']) : {};
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw badRequest('the DeleteOptions body must be an object');
  const o = parsed as { propagationPolicy?: string; orphanDependents?: boolean; dryRun?: string[]; preconditions?: DeleteOptions['preconditions'] };
  const policy = r.q('propagationPolicy') ?? o.propagationPolicy ?? (o.orphanDependents ? 'Orphan' : undefined);
  if (policy !== undefined && !['Orphan', 'Background', 'Foreground'].includes(policy)) {
    throw badRequest(`invalid propagationPolicy "${policy}": use Orphan, Background or Foreground`);
  }
  const dryRun = parseDryRun(r.q('dryRun')) || (Array.isArray(o.dryRun) && o.dryRun.includes('All'));
  return { propagationPolicy: policy as DeleteOptions['propagationPolicy'], preconditions: o.preconditions, dryRun };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES) { req.resume(); throw tooLarge(MAX_BODY_BYTES); }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) { req.resume(); throw tooLarge(MAX_BODY_BYTES); }
    chunks.push(chunk as Buffer);
  }
  // latin1 maps each byte to one char, so a protobuf body survives the string plumbing intact.
  return Buffer.concat(chunks).toString((req.headers['content-type'] ?? '').toLowerCase().startsWith(PROTOBUF_CONTENT_TYPE) ? 'latin1' : 'utf8');
}

function parseBody(body: string, contentType: string | undefined): unknown {
  const type = (contentType ?? 'application/json').split(';')[0].trim().toLowerCase();
  if (!body.trim()) throw badRequest('the request body is empty: send the object as JSON or YAML');
  if (type === PROTOBUF_CONTENT_TYPE) return parseProtobuf(body);
  try {
    if (type === 'application/json' || type === '') return JSON.parse(body);
    if (type === 'application/yaml' || type === 'application/x-yaml' || type === 'text/yaml') return YAML.parse(body);
  } catch (e) {
    // The YAML parser recurses: a body nested too deep for it is refused as JSON ones are (resources.ts checkBody).
    if (e instanceof RangeError || (e instanceof Error && /Maximum call stack/.test(e.message))) {
      throw new ApiError(422, 'Invalid', `the request body is invalid: must not be nested more than ${MAX_NESTING_DEPTH} levels deep`);
    }
    throw badRequest(`the request body is not valid ${type.includes('yaml') ? 'YAML' : 'JSON'}: ${e instanceof Error ? e.message.split('\n')[0] : e}`);
  }
  throw unsupportedMediaType(type);
}

/** kubectl's typed clients (create namespace/configmap/secret/service) send protobuf; readBody kept the bytes as latin1. */
function parseProtobuf(body: string): unknown {
  try {
    return decodeProtobufObject(Buffer.from(body, 'latin1'));
  } catch (e) {
    if (e instanceof UnsupportedProtobufKind) throw new ApiError(415, 'UnsupportedMediaType', e.message);
    if (e instanceof ProtobufError) throw badRequest(`the request body is not valid Kubernetes protobuf: ${e.message}`);
    throw e;
  }
}

function sendJson(res: ServerResponse, code: number, body: unknown, warnings: string[] = []): void {
  const data = JSON.stringify(body);
  const headers: Record<string, string | string[]> = { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(data)) };
  if (warnings.length) headers.Warning = warnings.map((w) => `299 - "${w.replace(/["\\]/g, '\\$&').replace(/[\r\n]/g, ' ')}"`);
  res.writeHead(code, headers).end(data);
}

export { createHttpsServer };
