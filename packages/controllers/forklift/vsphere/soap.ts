/**
 * A small client of the vSphere Web Services API (SOAP over HTTPS, namespace urn:vim25), enough
 * for Forklift's `vsphere` provider: RetrieveServiceContent, Login, RetrievePropertiesEx over a
 * ContainerView, tasks (PowerOffVM_Task, waited for by polling `info`), and datastore file
 * downloads through `/folder/<path>?dcPath=..&dsName=..` with the session cookie. Replies are
 * read with the OVF reader's XML parser (no DTDs, no entities). TLS: the Secret's `cacert`, or
 * no verification with `insecureSkipVerify`; the server's SHA-1 fingerprint is recorded, as
 * Forklift records it in the Provider's status.
 */
import https from 'node:https';
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { kid, kids, parseXml, XmlError, type XmlElement } from '../xml.ts';

export class VsphereError extends Error {
  constructor(
    /** Stable code: ConnectionFailed (TLS, network), LoginFailed, Fault (a SOAP fault), TaskFailed, NotFound, BadReply. */
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** A managed object reference: its type and value ("VirtualMachine", "vm-42"). */
export interface MoRef {
  type: string;
  value: string;
}

export interface VsphereOptions {
  /** PEM of the CA (or the server's certificate) to trust; ignored with `insecureSkipVerify`. */
  cacert?: string;
  insecureSkipVerify?: boolean;
  /** Per-request timeout (default 30 s). */
  timeoutMs?: number;
}

/** XML text escaping for arguments. */
export const esc = (s: string): string => s.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c] ?? c);

/** `<name type="T">v</name>` for a managed object reference. */
export const moXml = (name: string, ref: MoRef): string => `<${name} type="${esc(ref.type)}">${esc(ref.value)}</${name}>`;
/** A moref read from an element such as `<obj type="VirtualMachine">vm-42</obj>`. */
export const moOf = (el: XmlElement | undefined): MoRef | undefined => (el ? { type: el.attrs.type ?? '', value: el.text.trim() } : undefined);

/** The `urn:vim25` SOAP envelope of one call. */
export function envelope(method: string, body: string): string {
  return (
    '<?xml version="1.0" encoding="UTF-8"?>' +
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">' +
    `<soapenv:Body><${method} xmlns="urn:vim25">${body}</${method}></soapenv:Body></soapenv:Envelope>`
  );
}

/** The body's response element of a SOAP reply, or VsphereError Fault with the fault's string and type. */
export function parseReply(text: string, method: string): XmlElement {
  let root: XmlElement;
  try {
    root = parseXml(text);
  } catch (e) {
    throw new VsphereError('BadReply', `${method}: ${e instanceof XmlError ? e.message : String(e)}`);
  }
  const body = kid(root, 'Body');
  const fault = kid(body, 'Fault');
  if (fault) {
    const detail = kid(fault, 'detail')?.children[0];
    const kind = detail?.attrs.type ?? detail?.name ?? '';
    throw new VsphereError(
      kind === 'InvalidLogin' ? 'LoginFailed' : 'Fault',
      `${method}: ${kid(fault, 'faultstring')?.text.trim() ?? 'fault'}${kind ? ` (${kind})` : ''}`,
    );
  }
  const res = kid(body, `${method}Response`);
  if (!res) throw new VsphereError('BadReply', `${method}: no ${method}Response in the reply`);
  return res;
}

/** One object's properties from RetrievePropertiesEx: path → the `val` element. */
export interface ObjectContent {
  obj: MoRef;
  props: Map<string, XmlElement>;
  /** Paths the server could not read (missingSet), e.g. `snapshot` of a VM without any. */
  missing: string[];
}

/** The `objects` of a RetrievePropertiesEx/ContinueRetrievePropertiesEx `returnval`, and its `token`. */
export function parseRetrieveResult(returnval: XmlElement | undefined): { objects: ObjectContent[]; token?: string } {
  const objects = kids(returnval, 'objects').map((oc) => ({
    obj: moOf(kid(oc, 'obj')) ?? { type: '', value: '' },
    props: new Map(kids(oc, 'propSet').map((p) => [kid(p, 'name')?.text.trim() ?? '', kid(p, 'val') ?? { name: 'val', attrs: {}, children: [], text: '' }])),
    missing: kids(oc, 'missingSet').map((m) => kid(m, 'path')?.text.trim() ?? ''),
  }));
  const token = kid(returnval, 'token')?.text.trim();
  return { objects, ...(token ? { token } : {}) };
}

export class VsphereClient {
  private readonly agent: https.Agent;
  private readonly sdk: URL;
  private cookie = '';
  private content: XmlElement | undefined;
  /** The server certificate's SHA-1 fingerprint (colon-separated hex), set by the first call. */
  fingerprint = '';

  constructor(
    url: string,
    private readonly opts: VsphereOptions = {},
  ) {
    this.sdk = new URL(url);
    if (this.sdk.protocol !== 'https:') throw new VsphereError('ConnectionFailed', `the URL must be https: ${url}`);
    this.agent = new https.Agent({
      keepAlive: true,
      maxSockets: 4,
      rejectUnauthorized: !opts.insecureSkipVerify,
      ...(opts.cacert && !opts.insecureSkipVerify ? { ca: opts.cacert } : {}),
    });
  }

  close(): void {
    this.agent.destroy();
  }

  /** One HTTPS request: the response (body not read), or VsphereError ConnectionFailed. */
  request(method: string, url: URL, headers: Record<string, string>, body?: string): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const req = https.request(url, { method, agent: this.agent, headers: { ...(this.cookie ? { Cookie: this.cookie } : {}), ...headers } }, (res) => {
        const sock = res.socket as TLSSocket;
        const fp = sock.getPeerCertificate?.()?.fingerprint;
        if (fp) this.fingerprint = fp;
        resolve(res);
      });
      req.setTimeout(this.opts.timeoutMs ?? 30_000, () => req.destroy(new Error('timed out')));
      req.on('error', (e: NodeJS.ErrnoException) => reject(new VsphereError('ConnectionFailed', `${url.host}: ${e.code ? `${e.code}: ` : ''}${e.message}`)));
      req.end(body);
    });
  }

  /** Calls `method` with `body` (the arguments' XML, `_this` included); the response element. */
  async call(method: string, body: string): Promise<XmlElement> {
    const res = await this.request('POST', this.sdk, { 'Content-Type': 'text/xml; charset=utf-8', SOAPAction: 'urn:vim25/6.5' }, envelope(method, body));
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of res) {
      size += (c as Buffer).length;
      // Inventories of thousands of VMs are paged (maxObjects), so a reply this large is not one.
      if (size > 64 * 1024 * 1024) throw new VsphereError('BadReply', `${method}: reply over 64 MiB`);
      chunks.push(c as Buffer);
    }
    const setCookie = res.headers['set-cookie'];
    const session = setCookie?.map((c) => c.split(';')[0]).find((c) => c.startsWith('vmware_soap_session='));
    if (session) this.cookie = session;
    const text = Buffer.concat(chunks).toString('utf8');
    if ((res.statusCode ?? 0) >= 400 && !text.includes('Fault>')) throw new VsphereError('Fault', `${method}: HTTP ${res.statusCode}`);
    return parseReply(text, method);
  }

  /** The ServiceInstance's content (rootFolder, propertyCollector, viewManager, sessionManager, about). */
  async serviceContent(): Promise<XmlElement> {
    if (!this.content) {
      const res = await this.call('RetrieveServiceContent', moXml('_this', { type: 'ServiceInstance', value: 'ServiceInstance' }));
      this.content = kid(res, 'returnval');
      if (!this.content) throw new VsphereError('BadReply', 'RetrieveServiceContent: no returnval');
    }
    return this.content;
  }

  private async manager(name: string): Promise<MoRef> {
    const ref = moOf(kid(await this.serviceContent(), name));
    if (!ref) throw new VsphereError('BadReply', `the service content has no ${name}`);
    return ref;
  }

  async login(user: string, password: string): Promise<void> {
    const sm = await this.manager('sessionManager');
    await this.call('Login', `${moXml('_this', sm)}<userName>${esc(user)}</userName><password>${esc(password)}</password>`);
  }

  async logout(): Promise<void> {
    const sm = await this.manager('sessionManager');
    await this.call('Logout', moXml('_this', sm)).catch(() => undefined);
  }

  /** The session cookie ("vmware_soap_session=…"), for datastore downloads. */
  get sessionCookie(): string {
    return this.cookie;
  }

  /**
   * Properties of every object of `types` under the root folder, through a ContainerView and
   * RetrievePropertiesEx (paged with ContinueRetrievePropertiesEx). `types` maps a type to its paths.
   */
  async retrieveAll(types: Record<string, string[]>): Promise<ObjectContent[]> {
    const root = await this.manager('rootFolder');
    const pc = await this.manager('propertyCollector');
    const vm = await this.manager('viewManager');
    const view = moOf(
      kid(
        await this.call(
          'CreateContainerView',
          `${moXml('_this', vm)}${moXml('container', root)}${Object.keys(types)
            .map((t) => `<type>${esc(t)}</type>`)
            .join('')}<recursive>true</recursive>`,
        ),
        'returnval',
      ),
    );
    if (!view) throw new VsphereError('BadReply', 'CreateContainerView: no view');
    try {
      const propSets = Object.entries(types)
        .map(([t, paths]) => `<propSet><type>${esc(t)}</type>${paths.map((p) => `<pathSet>${esc(p)}</pathSet>`).join('')}</propSet>`)
        .join('');
      const spec =
        `<specSet>${propSets}<objectSet>${moXml('obj', view)}<skip>true</skip>` +
        `<selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet>`;
      let page = parseRetrieveResult(
        kid(await this.call('RetrievePropertiesEx', `${moXml('_this', pc)}${spec}<options><maxObjects>500</maxObjects></options>`), 'returnval'),
      );
      const out = [...page.objects];
      while (page.token) {
        page = parseRetrieveResult(kid(await this.call('ContinueRetrievePropertiesEx', `${moXml('_this', pc)}<token>${esc(page.token)}</token>`), 'returnval'));
        out.push(...page.objects);
      }
      return out;
    } finally {
      await this.call('DestroyView', moXml('_this', view)).catch(() => undefined);
    }
  }

  /** Properties of one object. */
  async retrieve(obj: MoRef, paths: string[]): Promise<ObjectContent | undefined> {
    const pc = await this.manager('propertyCollector');
    const spec = `<specSet><propSet><type>${esc(obj.type)}</type>${paths.map((p) => `<pathSet>${esc(p)}</pathSet>`).join('')}</propSet><objectSet>${moXml('obj', obj)}</objectSet></specSet>`;
    return parseRetrieveResult(kid(await this.call('RetrievePropertiesEx', `${moXml('_this', pc)}${spec}<options/>`), 'returnval')).objects[0];
  }

  /**
   * Runs a `*_Task` method on `obj` and waits for the task to end (polling `info`); its
   * `info.result` (e.g. CreateSnapshot_Task's snapshot moref), or VsphereError TaskFailed with its fault.
   */
  async runTask(method: string, obj: MoRef, args = '', timeoutMs = 120_000): Promise<XmlElement | undefined> {
    const task = moOf(kid(await this.call(method, `${moXml('_this', obj)}${args}`), 'returnval'));
    if (!task) throw new VsphereError('BadReply', `${method}: no task`);
    const deadline = Date.now() + timeoutMs;
    for (let wait = 100; ; wait = Math.min(wait * 2, 2000)) {
      const info = (await this.retrieve(task, ['info.state', 'info.error', 'info.result']))?.props;
      const state = info?.get('info.state')?.text.trim();
      if (state === 'success') return info?.get('info.result');
      if (state === 'error') {
        const err = info?.get('info.error');
        throw new VsphereError('TaskFailed', `${method}: ${kid(err, 'localizedMessage')?.text.trim() || kid(err, 'fault')?.attrs.type || 'failed'}`);
      }
      if (Date.now() > deadline) throw new VsphereError('TaskFailed', `${method}: still ${state ?? 'unknown'} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  /** GET of a datastore file (`[ds] dir/file.vmdk` split into datastore and path) in datacenter `dcPath`; `range` [start, end] inclusive. */
  async download(dcPath: string, dsName: string, path: string, range?: [number, number]): Promise<IncomingMessage> {
    const u = new URL(`/folder/${path.split('/').map(encodeURIComponent).join('/')}`, this.sdk);
    u.searchParams.set('dcPath', dcPath);
    u.searchParams.set('dsName', dsName);
    return this.request('GET', u, range ? { Range: `bytes=${range[0]}-${range[1]}` } : {});
  }

  /** The SDK URL's host (an NFC lease's device URLs name `*` for it). */
  get host(): string {
    return this.sdk.host;
  }
}

/** `[LocalDS_0] vm/disk.vmdk` → datastore and path; undefined when not of that form. */
export function parseDatastorePath(p: string): { datastore: string; path: string } | undefined {
  const m = /^\[([^\]]+)\]\s*(.*)$/.exec(p);
  return m ? { datastore: m[1], path: m[2] } : undefined;
}
