/**
 * The HTTPS front: routes Kubernetes REST paths to discovery, OpenAPI and the generic
 * resource handlers, authenticates and authorizes every request, and answers every failure
 * with a Status. No framework: the paths are Kubernetes', and watches need the raw response.
 */
import { createServer as createHttpsServer } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import YAML from 'yaml';
import { findByResource, newEvent, openApiV3, openApiV3Index, openApiV2, type EventType } from '@vessel/api';
import type { Cidr, KindInfo, KubeObject } from '@vessel/api';
import { Router, type Params } from '@vessel/http';
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
import { BODY_ACTIONS, runAction } from './subresources.ts';
import { serveScale } from './scale.ts';
import { GUEST_INFO, guestInfo, kubevirtVersion } from './guest-agent.ts';
import { MEMORY_DUMP_ACTIONS, memoryDumpAction } from './memory-dump.ts';
import { issueUploadToken, proxyUpload } from './upload.ts';
import { serveExportManifest, serveExportVolume } from './vmexport.ts';
import { consoleUpgrade, rejectUpgrade, serialLog, type ConsoleDeps, type StreamTarget } from './console.ts';

/** Kubernetes' own limit for a request body. */
export const MAX_BODY_BYTES = 3 * 1024 * 1024;

export interface HandlerOptions {
  store: Store;
  /** host:port clients reach the server at (for /api's serverAddressByClientCIDRs). */
  serverAddress: string;
  bookmarkIntervalMs: number;
  /** The range ClusterIPs come from (default 10.96.0.0/16). */
  serviceCidr?: string;
  log?: (line: string) => void;
  /** The VM network fixed addresses must lie in (default 10.244.0.0/16). */
  vmNetwork?: Cidr;
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
  constructor(
    readonly req: IncomingMessage,
    readonly url: URL,
  ) {}
  q(name: string): string | undefined {
    return this.url.searchParams.get(name) ?? undefined;
  }
}

/** What a route's handler gets: the request, its path (trailing slashes dropped) and named params. */
interface Exchange {
  r: Request;
  res: ServerResponse;
  path: string;
  method: string;
  params: Params;
}

/** A route: `open` ones run without a user (probes, version, uploads, which carry an upload token). */
type Route = { open: true; run: (x: Exchange) => Promise<void> | void } | { open: false; run: (x: Exchange, user: User) => Promise<void> | void };
const open = (run: (x: Exchange) => Promise<void> | void): Route => ({ open: true, run });
const authed = (run: (x: Exchange, user: User) => Promise<void> | void): Route => ({ open: false, run });

const EVENTS_INFO = findByResource('', 'v1', 'events')!;

/** KubeVirt's subresource API (virt-api serves v1alpha3 as well). */
const KUBEVIRT_SUBRESOURCES = '/apis/subresources.kubevirt.io/:version(v1|v1alpha3)/namespaces/:namespace';
const ACTIONS = ':action(start|stop|restart|pause|unpause|softreboot|reset|addvolume|removevolume)';
const notFoundPath = (x: Exchange) => new ApiError(404, 'NotFound', `the server could not find the requested resource (${x.method} ${x.path})`);

export function parseResourcePath(pathname: string): ResourcePath | undefined {
  const segs = pathname
    .split('/')
    .filter((s) => s !== '')
    .map(decodeURIComponent);
  let group: string, version: string, rest: string[];
  if (segs[0] === 'api' && segs.length >= 3) {
    group = '';
    version = segs[1];
    rest = segs.slice(2);
  } else if (segs[0] === 'apis' && segs.length >= 4) {
    group = segs[1];
    version = segs[2];
    rest = segs.slice(3);
  } else return undefined;
  let watchPath = false;
  if (rest[0] === 'watch') {
    watchPath = true;
    rest = rest.slice(1);
  }
  let namespace: string | undefined;
  if (rest[0] === 'namespaces' && rest.length >= 3) {
    const inner = findByResource(group, version, rest[2]);
    if (inner?.namespaced) {
      namespace = rest[1];
      rest = rest.slice(2);
    }
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
  const resources = new Resources(opts.store, { serviceCidr: opts.serviceCidr });
  /** An Event written by admission itself (virt-api's recorder); never fails the request. */
  const admissionEvent = async (obj: KubeObject, type: EventType, reason: string, message: string): Promise<void> => {
    const event = newEvent(obj, type, reason, message, { component: 'virt-api' });
    await resources.create(EVENTS_INFO, event.metadata!.namespace!, event).catch(() => undefined);
  };
  const consoleDeps = { store: opts.store, resources, log: opts.log };
  const caches = new WatchCaches(opts.store);
  let v2Protobuf: Buffer | undefined;

  /**
   * Every path the server answers, first match wins. Routes that match a path but not the
   * method fall through to the next; the resource catch-alls last.
   */
  const routes = new Router<Route>()
    .on(
      '*',
      '/:probe(healthz|livez|readyz)',
      open(({ res }) => {
        res.writeHead(200, { 'Content-Type': 'text/plain' }).end('ok');
      }),
    )
    .on(
      '*',
      '/version',
      open(({ res }) => sendJson(res, 200, serverVersion)),
    )
    // Upload tokens authenticate uploads (CDI's upload proxy), not users.
    .on(
      ['POST', 'PUT', 'HEAD', 'GET'],
      '/v1beta1/:mode(upload|upload-async)',
      open(({ r, res, path }) => proxyUpload(resources, r.req, res, path)),
    )
    .on(
      '*',
      '/v1beta1/:mode(upload|upload-async)',
      open(({ method, path }) => {
        throw methodNotAllowed(method, path);
      }),
    )
    // Export tokens authenticate VirtualMachineExport downloads (KubeVirt's export proxy paths), not users.
    .on(
      'GET',
      '/api/export.kubevirt.io/v1beta1/namespaces/:namespace/:name/volumes/:volume/:file(disk.img|disk.img.gz)',
      open(({ r, res, params }) => serveExportVolume(resources, r.req, res, params)),
    )
    .on(
      'GET',
      '/api/export.kubevirt.io/v1beta1/namespaces/:namespace/:name/:scope(internal|external)/manifests/:which(all|secret)',
      open(({ r, res, params }) => serveExportManifest(resources, r.req, res, params)),
    )
    // From here on, every route needs a user.
    .on(
      '*',
      `${KUBEVIRT_SUBRESOURCES}/virtualmachineinstances/:name/:stream(console|vnc|serial-log)`,
      authed(({ r, res, path, params }) =>
        serialLog(consoleDeps, r.req, res, path, { namespace: params.namespace, name: params.name, subresource: params.stream as StreamTarget['subresource'] }),
      ),
    )
    .on(
      '*',
      `${KUBEVIRT_SUBRESOURCES}/:resource(virtualmachines|virtualmachineinstances)/:name/portforward/:port`,
      authed(({ r, res, path, params }) => serialLog(consoleDeps, r.req, res, path, forwardTarget(params))),
    )
    .on(
      '*',
      `${KUBEVIRT_SUBRESOURCES}/:resource(virtualmachines|virtualmachineinstances)/:name/portforward/:port/:protocol`,
      authed(({ r, res, path, params }) => serialLog(consoleDeps, r.req, res, path, forwardTarget(params))),
    )
    .on(
      'GET',
      `${KUBEVIRT_SUBRESOURCES}/virtualmachineinstances/:name/${GUEST_INFO}`,
      authed(async ({ res, params }, user) => sendJson(res, 200, await guestInfo(resources, user, params.namespace, params.name, params.info))),
    )
    .on(
      'PUT',
      `${KUBEVIRT_SUBRESOURCES}/virtualmachines/:name/${MEMORY_DUMP_ACTIONS}`,
      authed(async ({ r, res, params }, user) => {
        // The request body (memorydump's) is read once the user is known to be allowed; removememorydump has none.
        if (params.dump !== 'memorydump') r.req.resume();
        res.writeHead(await memoryDumpAction(resources, user, params.namespace, params.name, params.dump, () => readObject(r.req))).end();
      }),
    )
    .on(
      'GET',
      '/apis/subresources.kubevirt.io/:version(v1|v1alpha3)/version',
      authed(({ res }) => sendJson(res, 200, kubevirtVersion())),
    )
    .on(
      'GET',
      '/apis/subresources.kubevirt.io/:version(v1|v1alpha3)/healthz',
      authed(({ res }) => sendJson(res, 200, { apiserver: { connectivity: 'ok' } })),
    )
    .on(
      'POST',
      '/vessel/v1/tokens',
      authed(({ r, res }, user) => issueToken(r, res, user)),
    )
    .on(
      'PUT',
      `${KUBEVIRT_SUBRESOURCES}/:resource(virtualmachines|virtualmachineinstances)/:name/${ACTIONS}`,
      authed(async ({ r, res, params }, user) => {
        const { namespace, resource, name, action } = params;
        // addvolume / removevolume carry their options as JSON (read once authorized); the others need no body.
        const body = BODY_ACTIONS.has(action) ? () => readObject(r.req) : undefined;
        if (!body) r.req.resume();
        res.writeHead(await runAction(resources, user, namespace, resource, name, action, body)).end();
      }),
    )
    .on(
      '*',
      `${KUBEVIRT_SUBRESOURCES}/:resource(virtualmachines|virtualmachineinstances)/:name/${ACTIONS}`,
      authed(({ method, path }) => {
        throw methodNotAllowed(method, path);
      }),
    )
    .on(
      'POST',
      '/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/:namespace/uploadtokenrequests',
      authed(async ({ r, res, params }, user) => sendJson(res, 201, await issueUploadToken(resources, user, params.namespace, await readObject(r.req)))),
    )
    // OpenAPI: JSON, and v2 as protobuf too.
    .on(
      'GET',
      '/openapi/v2',
      authed(({ r, res }) => {
        if (OPENAPI_V2_PROTOBUF_TYPES.some((t) => accepts(r.req.headers.accept, t))) {
          // client-go's discovery reads OpenAPI v2 only as protobuf (kubectl apply of a kind not in v3 needs it).
          v2Protobuf ??= encodeOpenApiV2(openApiV2() as Record<string, unknown>);
          res.writeHead(200, { 'Content-Type': OPENAPI_V2_PROTOBUF_REPLY, 'Content-Length': String(v2Protobuf.length) }).end(v2Protobuf);
          return;
        }
        sendDoc(r, res, '/openapi/v2', openApiV2());
      }),
    )
    .on(
      'GET',
      '/openapi/v3',
      authed(({ r, res, path }) => sendDoc(r, res, path, openApiV3Index())),
    )
    .on(
      'GET',
      '/openapi/v3/api/:version(v1)',
      authed(({ r, res, path, params }) => sendDoc(r, res, path, openApiV3('', params.version))),
    )
    .on(
      'GET',
      '/openapi/v3/apis/:group/:version',
      authed(({ r, res, path, params }) => sendDoc(r, res, path, openApiV3(params.group, params.version))),
    )
    .on(
      'GET',
      '/openapi/*',
      authed((x) => {
        jsonOnly(x.r);
        throw notFoundPath(x);
      }),
    )
    // Discovery.
    .on(
      'GET',
      '/api',
      authed(({ res }) => sendJson(res, 200, apiVersions(opts.serverAddress))),
    )
    .on(
      'GET',
      '/apis',
      authed(({ res }) => sendJson(res, 200, apiGroupList())),
    )
    .on(
      'GET',
      '/api/v1',
      authed(({ r, res, path }) => sendDoc(r, res, path, apiResourceList('', 'v1'))),
    )
    .on(
      'GET',
      '/apis/:group',
      authed(({ r, res, path, params }) => sendDoc(r, res, path, apiGroupDoc(params.group))),
    )
    .on(
      'GET',
      '/apis/:group/:version',
      authed(({ r, res, path, params }) => sendDoc(r, res, path, apiResourceList(params.group, params.version))),
    )
    // Resources: /api/v1/[namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]], /apis/GROUP/VERSION/... (parseResourcePath).
    .on(
      '*',
      '/:prefix(api|apis)/*',
      authed(async (x, user) => {
        const rp = parseResourcePath(x.path);
        if (!rp) throw notFoundPath(x);
        await serveResource(x.r, x.res, rp, user, x.method);
      }),
    );
  const unknownPath = authed((x) => {
    throw notFoundPath(x);
  });

  const handle = async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = Date.now();
    const url = new URL(req.url ?? '/', 'https://vessel');
    try {
      const path = url.pathname.replace(/\/+$/, '') || '/';
      const method = req.method ?? 'GET';
      const { handler, params } = routes.match(method, path) ?? { handler: unknownPath, params: {} };
      const x: Exchange = { r: new Request(req, url), res, path, method, params };
      if (handler.open) await handler.run(x);
      else {
        // Every other path needs a user first: a 401 before any 404 or 405.
        const user = await authenticate(opts.store, req.headers.authorization);
        if (!user) throw unauthorized();
        await handler.run(x, user);
      }
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

  /** `vessel token create`: admins issue tokens; the token is shown once and stored hashed. */
  async function issueToken(r: Request, res: ServerResponse, user: User): Promise<void> {
    authorize(user, { verb: 'create', group: 'vessel.io', resource: 'tokens' });
    const body = (await readObject(r.req)) as { user?: unknown; groups?: unknown; description?: unknown };
    const causes = [];
    if (typeof body.user !== 'string' || !/^[A-Za-z0-9:@._-]{1,253}$/.test(body.user))
      causes.push({ reason: 'FieldValueInvalid', field: 'user', message: 'must be a user name of letters, digits and :@._-' });
    if (body.groups !== undefined && !(Array.isArray(body.groups) && body.groups.every((g) => typeof g === 'string')))
      causes.push({ reason: 'FieldValueInvalid', field: 'groups', message: 'must be a list of group names' });
    if (causes.length)
      throw new ApiError(422, 'Invalid', `token request is invalid: ${causes.map((c) => `${c.field}: ${c.message}`).join(', ')}`, {
        kind: 'Token',
        group: 'vessel.io',
        causes,
      });
    const groups = (body.groups as string[] | undefined) ?? [];
    const token = await createToken(opts.store, body.user as string, groups, typeof body.description === 'string' ? body.description : undefined);
    return sendJson(res, 201, { kind: 'Token', apiVersion: 'vessel.io/v1', user: body.user, groups, token });
  }

  async function serveResource(r: Request, res: ServerResponse, rp: ResourcePath, user: User, method: string): Promise<void> {
    const { info, namespace, name, subresource } = rp;
    if (info.namespaced && name !== undefined && namespace === undefined) {
      throw new ApiError(
        404,
        'NotFound',
        `the server could not find the requested resource: ${info.plural} are namespaced; use /namespaces/<namespace>/${info.plural}/${name}`,
      );
    }
    const watch = rp.watchPath || parseBool('watch', r.q('watch')) === true;
    const verb = verbOf(method, name, watch);
    if (!verb) throw methodNotAllowed(method, r.url.pathname);
    authorize(user, { verb, group: info.group, resource: info.plural, subresource, namespace, name });
    const labels = parseLabelSelector(r.q('labelSelector'));
    const fields = parseFieldSelector(r.q('fieldSelector'));
    const write: WriteOptions = {
      dryRun: parseDryRun(r.q('dryRun')),
      fieldManager: r.q('fieldManager'),
      fieldValidation: parseFieldValidation(r.q('fieldValidation')),
      force: parseForce(r.q('force')),
      userAgent: r.req.headers['user-agent'],
      admit: (obj, current) =>
        admit(user, resources, info, obj, current, { vmNetwork: opts.vmNetwork, recordEvent: write.dryRun ? undefined : admissionEvent }),
    };
    const table = wantsTable(r.req.headers.accept);
    const includeObject = r.q('includeObject');
    const rv = parseResourceVersion(r.q('resourceVersion'));

    if (subresource === 'scale' && info.scaleSubresource && (verb === 'get' || verb === 'update' || verb === 'patch')) {
      const scale = await serveScale(
        resources,
        info,
        namespace,
        name!,
        verb,
        {
          object: () => readObject(r.req),
          patch: async () => ({ type: patchTypeOf(r.req.headers['content-type']), text: (await readBody(r.req)).toString('utf8') }),
        },
        write,
      );
      return sendJson(res, 200, scale);
    }
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
        if (limit !== undefined && (!Number.isInteger(limit) || limit < 0))
          throw badRequest(`invalid limit "${r.q('limit')}": it must be a non-negative integer`);
        const continueToken = r.q('continue') || undefined;
        const match = r.q('resourceVersionMatch') || undefined;
        // Kubernetes' ListOptions validation, a 422 like theirs.
        const listCause = (field: string, reason: string, message: string) => invalid('ListOptions', 'meta.k8s.io', '', [{ reason, field, message }]);
        if (match !== undefined && match !== 'Exact' && match !== 'NotOlderThan')
          throw listCause('resourceVersionMatch', 'FieldValueNotSupported', `Unsupported value: "${match}": supported values: "Exact", "NotOlderThan"`);
        if (match !== undefined && rv === undefined)
          throw listCause('resourceVersionMatch', 'FieldValueForbidden', 'Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided');
        if (match === 'Exact' && rv === 0)
          throw listCause('resourceVersionMatch', 'FieldValueForbidden', 'Forbidden: resourceVersionMatch "exact" is forbidden for resourceVersion "0"');
        if (continueToken && rv)
          throw listCause('resourceVersion', 'FieldValueForbidden', 'Forbidden: specifying resource version is not allowed when using continue');
        // Kubernetes' list semantics: a limit with a resourceVersion (and no match) reads at exactly that revision.
        const exact = !!rv && (match === 'Exact' || (match === undefined && limit !== undefined && limit > 0));
        if (rv) await waitForRevision(opts.store, rv);
        const page = await resources.list(info, namespace, { labels, fields, limit, continueToken, revision: exact ? rv : undefined });
        const meta = { resourceVersion: String(page.revision), ...(page.continueToken ? { continue: page.continueToken } : {}) };
        if (table) return sendJson(res, 200, toTable(info, page.items, meta, includeObject));
        return sendJson(res, 200, {
          apiVersion: info.group ? `${info.group}/${info.version}` : info.version,
          kind: info.listKind,
          metadata: meta,
          items: page.items,
        });
      }
      case 'watch': {
        const timeout = r.q('timeoutSeconds');
        if (rv) await waitForRevision(opts.store, rv);
        return serveWatch(opts.store, caches, res, {
          info,
          namespace,
          resourceVersion: r.q('resourceVersion'),
          labels,
          fields: name ? combine(fields, (o) => (o.metadata as { name?: string }).name === name) : fields,
          allowBookmarks: parseBool('allowWatchBookmarks', r.q('allowWatchBookmarks')) ?? false,
          sendInitialEvents: parseBool('sendInitialEvents', r.q('sendInitialEvents')) ?? false,
          timeoutSeconds: timeout !== undefined && /^\d+$/.test(timeout) ? Number(timeout) : undefined,
          table,
          includeObject,
          bookmarkIntervalMs: opts.bookmarkIntervalMs,
        });
      }
      case 'create': {
        if (subresource) throw methodNotAllowed(method, r.url.pathname);
        const w = await resources.create(info, namespace, await readObject(r.req), write);
        return sendJson(res, 201, w.object, w.warnings);
      }
      case 'update': {
        const w = await resources.update(info, namespace, name!, await readObject(r.req), subresource, write);
        return sendJson(res, 200, w.object, w.warnings);
      }
      case 'patch': {
        const type = patchTypeOf(r.req.headers['content-type']);
        const w = await resources.patch(info, namespace, name!, type, (await readBody(r.req)).toString('utf8'), subresource, write);
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
          try {
            items.push((await resources.delete(info, o.metadata.namespace, o.metadata.name, options)).object);
          } catch (e) {
            if (!(e instanceof ApiError && e.code === 404)) throw e;
          }
        }
        return sendJson(res, 200, { apiVersion: info.group ? `${info.group}/${info.version}` : info.version, kind: info.listKind, metadata: {}, items });
      }
    }
  }
}

/** A discovery or OpenAPI document as JSON; a 404 when the group or version is unknown. */
function sendDoc(r: Request, res: ServerResponse, path: string, doc: unknown): void {
  if (path.startsWith('/openapi/')) jsonOnly(r);
  if (doc === undefined || doc === null) throw new ApiError(404, 'NotFound', `the server could not find the requested resource (${path})`);
  sendJson(res, 200, doc);
}

function jsonOnly(r: Request): void {
  if (!acceptsJson(r.req.headers.accept)) throw new ApiError(406, 'NotAcceptable', 'only application/json is served here (and protobuf for /openapi/v2)');
}

/** A port-forward path's parameters as the stream it names. */
function forwardTarget(p: Params): StreamTarget {
  return {
    namespace: p.namespace,
    name: p.name,
    subresource: 'portforward',
    resource: p.resource as StreamTarget['resource'],
    port: p.port,
    protocol: p.protocol,
  };
}

/** The upgrade listener: console, VNC and port-forward websockets; any other upgrade is a 404 Status. */
export interface UpgradeHandler {
  (req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** Ends every open session (upgraded sockets would keep the HTTPS server from closing). */
  close(): void;
}

export function createUpgradeHandler(deps: ConsoleDeps): UpgradeHandler {
  const consoles = consoleUpgrade(deps);
  type Upgrade = (req: IncomingMessage, socket: Duplex, head: Buffer, params: Params) => void;
  const upgrades = new Router<Upgrade>()
    .on('*', `${KUBEVIRT_SUBRESOURCES}/virtualmachineinstances/:name/:stream(console|vnc)`, (req, socket, head, { namespace, name, stream }) =>
      consoles(req, socket, head, { namespace, name, subresource: stream as StreamTarget['subresource'] }),
    )
    .on('*', `${KUBEVIRT_SUBRESOURCES}/:resource(virtualmachines|virtualmachineinstances)/:name/portforward/:port`, (req, socket, head, params) =>
      consoles(req, socket, head, forwardTarget(params)),
    )
    .on('*', `${KUBEVIRT_SUBRESOURCES}/:resource(virtualmachines|virtualmachineinstances)/:name/portforward/:port/:protocol`, (req, socket, head, params) =>
      consoles(req, socket, head, forwardTarget(params)),
    );
  const upgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const m = upgrades.match(req.method ?? 'GET', (req.url ?? '/').split('?')[0].replace(/\/$/, ''));
    if (m) m.handler(req, socket, head, m.params);
    else rejectUpgrade(socket, new ApiError(404, 'NotFound', `the server could not find the requested resource (upgrade ${req.url})`));
  };
  return Object.assign(upgrade, { close: () => consoles.close() });
}

function accepts(accept: string | undefined, type: string): boolean {
  return !!accept && accept.split(',').some((a) => a.split(';')[0].trim() === type);
}

function acceptsJson(accept: string | undefined): boolean {
  return !accept || accept.split(',').some((a) => /^\s*(application\/json|\*\/\*|application\/\*)/.test(a));
}

function verbOf(method: string, name: string | undefined, watch: boolean): string | undefined {
  switch (method) {
    case 'GET':
      return watch ? 'watch' : name === undefined ? 'list' : 'get';
    case 'POST':
      return name === undefined ? 'create' : undefined;
    case 'PUT':
      return name === undefined ? undefined : 'update';
    case 'PATCH':
      return name === undefined ? undefined : 'patch';
    case 'DELETE':
      return name === undefined ? 'deletecollection' : 'delete';
    default:
      return undefined;
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

function deleteOptions(r: Request, body: Buffer): DeleteOptions {
  const parsed = bodyText(body, r.req.headers['content-type']).trim() ? parseBody(body, r.req.headers['content-type']) : {};
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw badRequest('the DeleteOptions body must be an object');
  const o = parsed as { propagationPolicy?: string; orphanDependents?: boolean; dryRun?: string[]; preconditions?: DeleteOptions['preconditions'] };
  const policy = r.q('propagationPolicy') ?? o.propagationPolicy ?? (o.orphanDependents ? 'Orphan' : undefined);
  if (policy !== undefined && !['Orphan', 'Background', 'Foreground'].includes(policy)) {
    throw badRequest(`invalid propagationPolicy "${policy}": use Orphan, Background or Foreground`);
  }
  const dryRun = parseDryRun(r.q('dryRun')) || (Array.isArray(o.dryRun) && o.dryRun.includes('All'));
  return { propagationPolicy: policy as DeleteOptions['propagationPolicy'], preconditions: o.preconditions, dryRun };
}

/** The request body, parsed by its content type. */
async function readObject(req: IncomingMessage): Promise<unknown> {
  return parseBody(await readBody(req), req.headers['content-type']);
}

/** The request body's bytes, refused past MAX_BODY_BYTES; parseBody decodes them by content type. */
async function readBody(req: IncomingMessage): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES) {
    req.resume();
    throw tooLarge(MAX_BODY_BYTES);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) {
      req.resume();
      throw tooLarge(MAX_BODY_BYTES);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** The body as text for the emptiness check: protobuf bytes one char each (latin1), anything else UTF-8. */
function bodyText(body: Buffer, contentType: string | undefined): string {
  return body.toString((contentType ?? '').toLowerCase().startsWith(PROTOBUF_CONTENT_TYPE) ? 'latin1' : 'utf8');
}

function parseBody(bytes: Buffer, contentType: string | undefined): unknown {
  const type = (contentType ?? 'application/json').split(';')[0].trim().toLowerCase();
  const body = bodyText(bytes, contentType);
  if (!body.trim()) throw badRequest('the request body is empty: send the object as JSON or YAML');
  if (type === PROTOBUF_CONTENT_TYPE) return parseProtobuf(bytes);
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

/** kubectl's typed clients (create namespace/configmap/secret/service) send protobuf. */
function parseProtobuf(body: Buffer): unknown {
  try {
    return decodeProtobufObject(body);
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
