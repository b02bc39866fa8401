/**
 * A small Kubernetes REST client over node:https: JSON requests, resource CRUD, watches
 * (newline-delimited JSON) and discovery-based name resolution. It trusts exactly the CA in
 * the kubeconfig and reuses connections (keep-alive), since the CLI and controllers make many
 * small requests to one server.
 */
import http from 'node:http';
import https from 'node:https';
import { ClientError, StatusError, reasonForCode, type Status } from './errors.ts';
import {
  resolveResource,
  resolveResourceOrCategory,
  resourceForKind,
  resourcesFromList,
  type APIGroupListDoc,
  type APIResourceListDoc,
  type ApiResource,
  type ResourceRef,
} from './discovery.ts';
import { loadKubeconfig, type ClusterConfig, type FindKubeconfigOptions } from './kubeconfig.ts';
import type { KubeList, KubeObject, WatchEvent } from './types.ts';

export type QueryValue = string | number | boolean | undefined;
export type Query = Record<string, QueryValue>;

export interface RequestOptions {
  query?: Query;
  /** Sent as JSON unless it is already a string or Buffer. */
  body?: unknown;
  contentType?: string;
  accept?: string;
}

export interface ClientOptions {
  /** Called with the text of each `Warning:` header the server sends (kubectl prints them). */
  onWarning?: (message: string) => void;
  userAgent?: string;
  /** Give up on a (non-watch) request after this long without data. Default 60s. */
  timeoutMs?: number;
}

export interface NamespaceOption {
  namespace?: string;
}

export interface ListOptions extends NamespaceOption {
  labelSelector?: string;
  fieldSelector?: string;
  limit?: number;
  continue?: string;
  resourceVersion?: string;
}

export interface WatchOptions extends ListOptions {
  allowWatchBookmarks?: boolean;
  timeoutSeconds?: number;
}

export interface DeleteOptions extends NamespaceOption {
  propagationPolicy?: 'Foreground' | 'Background' | 'Orphan';
  gracePeriodSeconds?: number;
  /** Delete only this incarnation (uid) or version of the object; otherwise 409. */
  preconditions?: { uid?: string; resourceVersion?: string };
}

export type PatchType = 'merge' | 'json' | 'strategic';

export interface PatchOptions extends NamespaceOption {
  type?: PatchType;
  subresource?: string;
}

/** A running watch. `done` settles when the stream ends: resolved on close() or a clean end. */
export interface Watch {
  close(): void;
  done: Promise<void>;
}

const PATCH_CONTENT_TYPES: Record<PatchType, string> = {
  merge: 'application/merge-patch+json',
  json: 'application/json-patch+json',
  strategic: 'application/strategic-merge-patch+json',
};

/** `Accept` for server-side printing (what kubectl get sends). */
export const TABLE_ACCEPT = 'application/json;as=Table;v=v1;g=meta.k8s.io,application/json';

/** The URL path of a collection or object; no namespace on a namespaced type = all namespaces. */
export function resourcePath(res: ResourceRef, namespace?: string, name?: string, subresource?: string): string {
  let path = res.group ? `/apis/${res.group}/${res.version}` : `/api/${res.version}`;
  if (res.namespaced && namespace) path += `/namespaces/${encodeURIComponent(namespace)}`;
  path += `/${res.plural}`;
  if (name !== undefined) path += `/${encodeURIComponent(name)}`;
  if (subresource) path += `/${subresource}`;
  return path;
}

/** Appends the defined query values to a path. */
export function withQuery(path: string, query: Query = {}): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) if (value !== undefined && value !== '') params.set(key, String(value));
  const qs = params.toString();
  return qs ? `${path}${path.includes('?') ? '&' : '?'}${qs}` : path;
}

export class Client {
  readonly config: ClusterConfig;
  private readonly agent: http.Agent;
  private readonly options: ClientOptions;
  private discoveryCache?: Promise<ApiResource[]>;

  constructor(config: ClusterConfig, options: ClientOptions = {}) {
    this.config = config;
    this.options = options;
    this.agent = config.server.startsWith('https:')
      ? new https.Agent({
          keepAlive: true,
          ca: config.caPem,
          rejectUnauthorized: !config.insecureSkipTlsVerify,
          servername: config.tlsServerName,
          cert: config.clientCertPem,
          key: config.clientKeyPem,
        })
      : new http.Agent({ keepAlive: true });
  }

  /** A client for the kubeconfig found by the usual rules (see findKubeconfig). */
  static fromKubeconfig(find: FindKubeconfigOptions & { context?: string } = {}, options: ClientOptions = {}): Client {
    return new Client(loadKubeconfig(find), options);
  }

  /** The namespace used when none is given: the kubeconfig context's, else 'default'. */
  get namespace(): string {
    return this.config.namespace;
  }

  /** Closes idle connections. Idle keep-alive sockets do not keep the process alive anyway. */
  close(): void {
    this.agent.destroy();
  }

  /** One request; resolves with the parsed JSON body (undefined if empty), throws StatusError on >= 400. */
  async request<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.send(method, withQuery(path, opts.query), opts);
    const text = await readBody(res, path);
    if ((res.statusCode ?? 0) >= 400) throw statusErrorFrom(res.statusCode ?? 0, text);
    if (text.trim() === '') return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ClientError('BadResponse', `the server sent something that is not JSON for ${method} ${path}: ${text.slice(0, 200)}`);
    }
  }

  // ---- resources ----

  get<T extends KubeObject = KubeObject>(res: ResourceRef, name: string, opts: NamespaceOption = {}): Promise<T> {
    return this.request<T>('GET', resourcePath(res, this.ns(res, opts), name));
  }

  list<T extends KubeObject = KubeObject>(res: ResourceRef, opts: ListOptions = {}): Promise<KubeList<T>> {
    const { namespace: _ns, ...query } = opts;
    return this.request<KubeList<T>>('GET', resourcePath(res, opts.namespace), { query: { ...query } });
  }

  create<T extends KubeObject = KubeObject>(res: ResourceRef, obj: KubeObject, opts: NamespaceOption = {}): Promise<T> {
    const namespace = opts.namespace ?? obj.metadata?.namespace;
    return this.request<T>('POST', resourcePath(res, this.ns(res, { namespace })), { body: obj });
  }

  /** PUT; carry metadata.resourceVersion for optimistic concurrency (409 Conflict on a stale one). */
  update<T extends KubeObject = KubeObject>(res: ResourceRef, obj: KubeObject, opts: NamespaceOption & { subresource?: string } = {}): Promise<T> {
    const name = obj.metadata?.name;
    if (!name) throw new ClientError('BadManifest', 'update needs metadata.name');
    const namespace = opts.namespace ?? obj.metadata?.namespace;
    return this.request<T>('PUT', resourcePath(res, this.ns(res, { namespace }), name, opts.subresource), { body: obj });
  }

  patch<T extends KubeObject = KubeObject>(res: ResourceRef, name: string, patch: unknown, opts: PatchOptions = {}): Promise<T> {
    return this.request<T>('PATCH', resourcePath(res, this.ns(res, opts), name, opts.subresource), {
      body: patch,
      contentType: PATCH_CONTENT_TYPES[opts.type ?? 'merge'],
    });
  }

  /** DELETE; resolves with what the server returns (the object while finalizers run, or a Status). */
  delete(res: ResourceRef, name: string, opts: DeleteOptions = {}): Promise<KubeObject> {
    const { namespace: _ns, ...options } = opts;
    const hasOptions = Object.values(options).some((v) => v !== undefined);
    return this.request<KubeObject>('DELETE', resourcePath(res, this.ns(res, opts), name), {
      body: hasOptions ? { kind: 'DeleteOptions', apiVersion: 'v1', ...options } : undefined,
    });
  }

  /** Watches a resource collection (from `resourceVersion` if given). */
  watchResource<T extends KubeObject = KubeObject>(res: ResourceRef, opts: WatchOptions, onEvent: (event: WatchEvent<T>) => void): Watch {
    const { namespace, ...query } = opts;
    return this.watch<T>(resourcePath(res, namespace), { ...query }, onEvent);
  }

  /**
   * GET `path` with watch=true and calls onEvent for each JSON line. ERROR events (e.g. 410
   * Expired) are passed on as they are; the caller decides whether to relist.
   */
  watch<T = KubeObject>(path: string, query: Query, onEvent: (event: WatchEvent<T>) => void, opts: { accept?: string } = {}): Watch {
    let request: http.ClientRequest | undefined;
    let closed = false;
    const done = new Promise<void>((resolvePromise, reject) => {
      const url = new URL(withQuery(path, { ...query, watch: true }), this.config.server);
      request = this.transport().request(url, { method: 'GET', agent: this.agent, headers: this.headers(opts.accept) });
      request.setTimeout(0); // a quiet watch is normal; never time it out
      request.on('error', (err) => (closed ? resolvePromise() : reject(this.unreachable(err))));
      request.on('response', (res) => {
        this.reportWarnings(res);
        if ((res.statusCode ?? 0) >= 400) {
          readBody(res, path).then((text) => reject(statusErrorFrom(res.statusCode ?? 0, text)), reject);
          return;
        }
        res.setEncoding('utf8');
        let buffered = '';
        const deliver = (line: string) => {
          if (line.trim() === '') return;
          let event: WatchEvent<T>;
          try {
            event = JSON.parse(line) as WatchEvent<T>;
          } catch {
            request?.destroy();
            reject(new ClientError('BadResponse', `the server sent a watch event that is not JSON: ${line.slice(0, 200)}`));
            return;
          }
          onEvent(event);
        };
        res.on('data', (chunk: string) => {
          buffered += chunk;
          let nl: number;
          while (!closed && (nl = buffered.indexOf('\n')) >= 0) {
            const line = buffered.slice(0, nl);
            buffered = buffered.slice(nl + 1);
            deliver(line);
          }
        });
        res.on('end', () => {
          if (!closed) deliver(buffered);
          resolvePromise();
        });
        res.on('error', (err) => (closed ? resolvePromise() : reject(this.unreachable(err))));
        res.on('close', () => resolvePromise());
      });
      request.end();
    });
    return {
      close: () => {
        closed = true;
        request?.destroy();
      },
      done,
    };
  }

  // ---- discovery ----

  /** All resource types the server serves; fetched once per Client. */
  discovery(): Promise<ApiResource[]> {
    this.discoveryCache ??= this.fetchDiscovery().catch((e: unknown) => {
      this.discoveryCache = undefined; // let a later call try again
      throw e;
    });
    return this.discoveryCache;
  }

  /** Resolves `vm`, `virtualmachines`, `VirtualMachine`, `vm.kubevirt.io`, ... (kubectl's rules). */
  async resolve(name: string): Promise<ApiResource> {
    return this.withFreshDiscovery((resources) => resolveResource(resources, name));
  }

  /** Like resolve, but a category name (`all`) expands to its resource types. */
  async resolveMany(name: string): Promise<ApiResource[]> {
    return this.withFreshDiscovery((resources) => resolveResourceOrCategory(resources, name));
  }

  /** The resource type of an object's apiVersion + kind. */
  async resolveKind(apiVersion: string, kind: string): Promise<ApiResource> {
    return this.withFreshDiscovery((resources) => resourceForKind(resources, apiVersion, kind));
  }

  /** GET /version. */
  serverVersion(): Promise<Record<string, string>> {
    return this.request<Record<string, string>>('GET', '/version');
  }

  // ---- internals ----

  /** Runs `fn` on cached discovery; on an unknown name, refetches once (a CRD may be new). */
  private async withFreshDiscovery<T>(fn: (resources: ApiResource[]) => T): Promise<T> {
    const cached = this.discoveryCache !== undefined;
    try {
      return fn(await this.discovery());
    } catch (e) {
      if (!cached || !(e instanceof ClientError && e.code === 'UnknownResource')) throw e;
      this.discoveryCache = undefined;
      return fn(await this.discovery());
    }
  }

  private async fetchDiscovery(): Promise<ApiResource[]> {
    const core = await this.request<{ versions?: string[] }>('GET', '/api');
    const coreLists = (core?.versions ?? []).map((v) => this.resourceList(`/api/${v}`, v === 'v1'));

    let groups: APIGroupListDoc = { groups: [] };
    try {
      groups = await this.request<APIGroupListDoc>('GET', '/apis');
    } catch (e) {
      if (!(e instanceof StatusError && e.code === 404)) throw e; // a core-only server
    }
    const groupLists = (groups?.groups ?? []).flatMap((g) => {
      const preferred = g.preferredVersion?.version ?? g.versions[0]?.version;
      return g.versions.map((v) => this.resourceList(`/apis/${v.groupVersion}`, v.version === preferred));
    });
    return (await Promise.all([...coreLists, ...groupLists])).flat();
  }

  /** One group version's resources; a failing group version is skipped, as kubectl does. */
  private async resourceList(path: string, preferred: boolean): Promise<ApiResource[]> {
    try {
      return resourcesFromList(await this.request<APIResourceListDoc>('GET', path), preferred);
    } catch (e) {
      if (e instanceof StatusError) return [];
      throw e;
    }
  }

  private ns(res: ResourceRef, opts: NamespaceOption): string | undefined {
    return res.namespaced ? (opts.namespace ?? this.config.namespace) : undefined;
  }

  /**
   * A request whose body streams from `body` and whose response is handed over unread (uploads).
   * `bearer` replaces the kubeconfig's token (upload tokens). No timeout: a stall is the caller's to judge.
   */
  stream(
    method: string,
    path: string,
    opts: { headers?: http.OutgoingHttpHeaders; body?: NodeJS.ReadableStream; bearer?: string; signal?: AbortSignal } = {},
  ): Promise<http.IncomingMessage> {
    const headers = { ...this.headers(undefined, opts.body ? 'application/octet-stream' : undefined), ...opts.headers };
    if (opts.bearer) headers.Authorization = `Bearer ${opts.bearer}`;
    const url = new URL(path, this.config.server);
    return new Promise((resolvePromise, reject) => {
      const req = this.transport().request(url, { method, agent: this.agent, headers, signal: opts.signal });
      req.on('error', (err) => reject(this.unreachable(err)));
      req.on('response', resolvePromise);
      if (opts.body) {
        opts.body.on('error', (e) => req.destroy(e));
        opts.body.pipe(req);
      } else req.end();
    });
  }

  private transport(): typeof http | typeof https {
    return this.config.server.startsWith('https:') ? https : http;
  }

  private headers(accept?: string, contentType?: string): http.OutgoingHttpHeaders {
    const headers: http.OutgoingHttpHeaders = {
      Accept: accept ?? 'application/json',
      'User-Agent': this.options.userAgent ?? 'vessel-client',
    };
    if (contentType) headers['Content-Type'] = contentType;
    if (this.config.token) headers.Authorization = `Bearer ${this.config.token}`;
    return headers;
  }

  private send(method: string, pathAndQuery: string, opts: RequestOptions): Promise<http.IncomingMessage> {
    let body: string | Buffer | undefined;
    if (opts.body !== undefined) body = typeof opts.body === 'string' || Buffer.isBuffer(opts.body) ? opts.body : JSON.stringify(opts.body);
    const headers = this.headers(opts.accept, body !== undefined ? (opts.contentType ?? 'application/json') : undefined);
    if (body !== undefined) headers['Content-Length'] = Buffer.byteLength(body);
    const url = new URL(pathAndQuery, this.config.server);
    const timeoutMs = this.options.timeoutMs ?? 60_000;
    return new Promise((resolvePromise, reject) => {
      const req = this.transport().request(url, { method, agent: this.agent, headers });
      req.setTimeout(timeoutMs, () =>
        req.destroy(
          new ClientError(
            'Unreachable',
            `no answer from ${this.config.server} within ${timeoutMs / 1000}s (${method} ${url.pathname}): is the server overloaded or stopped?`,
          ),
        ),
      );
      req.on('error', (err) => reject(this.unreachable(err)));
      req.on('response', (res) => {
        this.reportWarnings(res);
        resolvePromise(res);
      });
      req.end(body);
    });
  }

  private reportWarnings(res: http.IncomingMessage): void {
    if (!this.options.onWarning) return;
    const raw = res.headers.warning;
    if (!raw) return;
    for (const message of parseWarningHeader(raw)) this.options.onWarning(message);
  }

  /** Turns a socket/TLS error into a ClientError that says what to check. */
  private unreachable(err: Error): Error {
    if (err instanceof ClientError) return err;
    const code = (err as NodeJS.ErrnoException).code ?? '';
    const server = this.config.server;
    let hint = 'is the server running? (`vessel up` or `vessel server`)';
    if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ALTNAME/.test(code)) {
      hint = `the server's certificate is not trusted by the CA in ${this.config.path || 'the kubeconfig'}: use the kubeconfig the server wrote (\`vessel kubeconfig\`)`;
    } else if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') {
      hint = 'check the server address in the kubeconfig';
    }
    return new ClientError('Unreachable', `cannot reach ${server}: ${err.message}: ${hint}`, { cause: err });
  }
}

/** Extracts the texts from `Warning: 299 - "text"` header values. */
export function parseWarningHeader(value: string | string[]): string[] {
  const values = Array.isArray(value) ? value : [value];
  const out: string[] = [];
  for (const v of values) {
    const re = /\d{3}\s+\S+\s+"((?:[^"\\]|\\.)*)"/g;
    let m: RegExpExecArray | null;
    let any = false;
    while ((m = re.exec(v)) !== null) {
      out.push(m[1].replace(/\\(.)/g, '$1'));
      any = true;
    }
    if (!any && v.trim()) out.push(v.trim());
  }
  return out;
}

function readBody(res: http.IncomingMessage, path: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('end', () => resolvePromise(Buffer.concat(chunks).toString('utf8')));
    res.on('error', (err) => reject(new ClientError('Unreachable', `the connection broke while reading ${path}: ${err.message}`, { cause: err })));
  });
}

/** A StatusError from an error response, whether or not its body is a Status. */
export function statusErrorFrom(httpCode: number, body: string): StatusError {
  try {
    const parsed = JSON.parse(body) as Partial<Status>;
    if (parsed && parsed.kind === 'Status') return new StatusError(parsed as Status, httpCode);
  } catch {
    // not JSON: fall through and use the text
  }
  const text = body.trim().slice(0, 500);
  return new StatusError(
    {
      kind: 'Status',
      status: 'Failure',
      code: httpCode,
      reason: reasonForCode(httpCode),
      message: text || `the server answered ${httpCode} ${reasonForCode(httpCode)}`,
    },
    httpCode,
  );
}
