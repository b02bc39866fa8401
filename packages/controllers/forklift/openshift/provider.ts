/**
 * The `openshift` provider's side of a cold migration (docs/forklift.md, "The openshift
 * provider"): a client for the source cluster (this one for an empty `url`, else the URL with
 * the Secret's token and CA), its inventory and TLS fingerprint, and the source steps of a VM:
 * stop it (remembering whether it ran), export it with a VirtualMachineExport, wait Ready, open
 * each disk's raw link with the export token, delete the export. The target VM is the source's
 * spec with the transferred claims, mapped networks and the plan's name and power state.
 */
import { connect as tlsConnect } from 'node:tls';
import { Client, isStatusError, type KubeObject } from '@vessel/client';
import { refs } from '@vessel/api';
import type { DiskBytes } from '../migration.ts';
import { inventoryVm, isRunning, networkOf, openshiftInventory, OpenshiftError, type OpenshiftSecret, type OpenshiftVm } from './inventory.ts';
import type { Inventory } from '../ova.ts';

const { VMS, VMIS, PVCS, DATAVOLUMES, NETWORK_ATTACHMENT_DEFINITIONS, STORAGE_CLASSES, VMEXPORTS, SECRETS } = refs;

type Obj = Record<string, unknown>;
const o = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const a = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

/** How long an export may take to become Ready (the VM stopping included). */
const EXPORT_READY_MS = 10 * 60_000;

/** A source cluster: its client, and the namespace it is limited to (the host provider reads only its own namespace). */
export interface SourceCluster {
  client: Client;
  /** Only VMs of this namespace (host provider: the Provider's namespace); undefined: every namespace. */
  namespace?: string;
  /** Whether `client` is ours to close. */
  owned: boolean;
}

/** A client for another cluster's API server with the Secret's token, CA or insecureSkipVerify. */
export function remoteClient(url: string, secret: OpenshiftSecret): Client {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new OpenshiftError('UrlNotValid', `"${url}" is not a URL`);
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new OpenshiftError('UrlNotValid', `"${url}" is not an http(s) URL`);
  return new Client(
    {
      path: '',
      context: '',
      server: url.replace(/\/+$/, ''),
      ...(secret.cacert ? { caPem: secret.cacert } : {}),
      insecureSkipTlsVerify: secret.insecureSkipVerify,
      token: secret.token,
      namespace: 'default',
    },
    { userAgent: 'vessel-forklift', timeoutMs: 30_000 },
  );
}

/** The server certificate's SHA-1 fingerprint (colon hex, as Forklift records it); '' for http. */
export function fingerprint(url: string, secret: OpenshiftSecret): Promise<string> {
  const u = new URL(url);
  if (u.protocol !== 'https:') return Promise.resolve('');
  return new Promise((resolve, reject) => {
    const sock = tlsConnect({
      host: u.hostname,
      port: Number(u.port || 443),
      servername: /^[\d.]+$|:/.test(u.hostname) ? undefined : u.hostname,
      ...(secret.cacert ? { ca: secret.cacert } : {}),
      rejectUnauthorized: !secret.insecureSkipVerify,
    });
    sock.setTimeout(15_000, () => sock.destroy(new Error('TLS handshake timed out')));
    sock.once('secureConnect', () => {
      const fp = sock.getPeerCertificate()?.fingerprint ?? '';
      sock.end();
      resolve(fp);
    });
    sock.once('error', (e: NodeJS.ErrnoException) => reject(new OpenshiftError('ConnectionFailed', `TLS to ${u.host}: ${e.code ?? ''} ${e.message}`.trim())));
  });
}

/** Errors of the source cluster in the provider's words: 401/403 Unauthorized/Forbidden, the rest ConnectionFailed. */
export function sourceError(e: unknown): OpenshiftError {
  if (e instanceof OpenshiftError) return e;
  if (isStatusError(e, 'Unauthorized')) return new OpenshiftError('Unauthorized', 'the source cluster refused the token (401)');
  if (isStatusError(e, 'Forbidden')) return new OpenshiftError('Forbidden', `the token may not read the source's VMs: ${(e as Error).message}`);
  const err = e as NodeJS.ErrnoException;
  return new OpenshiftError('ConnectionFailed', `${err?.code ? err.code + ': ' : ''}${err?.message ?? String(e)}`);
}

/** Reads the source's inventory (every namespace, or the host provider's own). */
export async function readOpenshiftInventory(src: SourceCluster): Promise<Inventory> {
  const ns = src.namespace ? { namespace: src.namespace } : {};
  const list = async (ref: (typeof refs)[keyof typeof refs], opt: { namespace?: string } = ns) => {
    try {
      return (await src.client.list(ref, opt)).items;
    } catch (e) {
      // A KubeVirt cluster without multus has no NADs; that is no reason to fail.
      if (ref === NETWORK_ATTACHMENT_DEFINITIONS && isStatusError(e, 'NotFound')) return [];
      throw e;
    }
  };
  const [vms, vmis, pvcs, dataVolumes, nads, storageClasses] = await Promise.all([
    list(VMS),
    list(VMIS),
    list(PVCS),
    list(DATAVOLUMES),
    list(NETWORK_ATTACHMENT_DEFINITIONS),
    list(STORAGE_CLASSES, {}),
  ]);
  return openshiftInventory({ vms, vmis, pvcs, dataVolumes, nads, storageClasses });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The export of one VM for one migration: `forklift-<migration uid>-<vm>`, cut to 63. */
export function exportName(migrationUid: string, vm: string): string {
  return `fk-${migrationUid.replace(/-/g, '').slice(0, 8)}-${vm}`.slice(0, 63).replace(/-+$/, '');
}

export interface SourceVmSession {
  /** Whether the VM was running before Initialize stopped it (targetPowerState `auto`). */
  wasRunning: boolean;
  /** The source VM as it was read (its spec is the target's model). */
  vm: KubeObject;
  /** Opens disk `i`'s raw bytes from the export. */
  open: (i: number) => Promise<DiskBytes>;
  /** Disk `i`'s raw link as the source's URL reaches it, the export token and the export's CA (for an http DataVolume). */
  link: (i: number) => { url: string; token: string; cert: string };
  /** Deletes the export (idempotent). */
  close: () => Promise<void>;
}

/**
 * Initialize for one VM: stop it when it runs (runStrategy Halted, its VMI waited gone by the
 * export's InUse), create the VirtualMachineExport, wait Ready; the session opens its disks.
 * The export is deleted on any failure here.
 */
export async function startSourceVm(src: SourceCluster, vm: OpenshiftVm, migrationUid: string, signal?: AbortSignal): Promise<SourceVmSession> {
  const ns = vm.namespace;
  let cur: KubeObject;
  try {
    cur = await src.client.get(VMS, vm.name, { namespace: ns });
  } catch (e) {
    if (isStatusError(e, 'NotFound')) throw new OpenshiftError('VMNotFound', `source VM ${ns}/${vm.name} is gone`);
    throw sourceError(e);
  }
  if (vm.uid && cur.metadata?.uid !== vm.uid) throw new OpenshiftError('VMNotFound', `source VM ${ns}/${vm.name} was re-created (uid changed)`);
  const vmi = await src.client.get(VMIS, vm.name, { namespace: ns }).catch(() => undefined);
  const wasRunning = isRunning(cur, vmi);
  if (wasRunning || o(cur.spec).running !== undefined)
    // Cold: the source stops first, so the disks are consistent; Forklift leaves it stopped.
    await src.client.patch(VMS, vm.name, { spec: { runStrategy: 'Halted', running: null } }, { namespace: ns, type: 'merge' });
  const name = exportName(migrationUid, vm.name);
  const close = async () => {
    await src.client.delete(VMEXPORTS, name, { namespace: ns }).catch((e: unknown) => {
      if (!isStatusError(e, 'NotFound')) throw e;
    });
  };
  try {
    await src.client
      .create(
        VMEXPORTS,
        {
          apiVersion: 'export.kubevirt.io/v1beta1',
          kind: 'VirtualMachineExport',
          metadata: { name, namespace: ns, labels: { 'forklift.konveyor.io/migration': migrationUid } },
          spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: vm.name }, ttlDuration: '12h' },
        },
        { namespace: ns },
      )
      .catch((e: unknown) => {
        if (!isStatusError(e, 'AlreadyExists')) throw e;
      });
    const deadline = Date.now() + EXPORT_READY_MS;
    let ex: KubeObject;
    let reason = '';
    for (;;) {
      if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error('aborted');
      ex = await src.client.get(VMEXPORTS, name, { namespace: ns });
      const st = o(ex.status);
      if (st.phase === 'Ready') break;
      reason = String(
        a(st.conditions)
          .map(o)
          .find((c) => c.type === 'Ready')?.reason ??
          st.phase ??
          '',
      );
      if (Date.now() > deadline) throw new OpenshiftError('ExportNotReady', `export ${ns}/${name} not Ready after ${EXPORT_READY_MS / 1000} s (${reason})`);
      await sleep(1000);
    }
    const st = o(ex.status);
    const secretName = String(st.tokenSecretRef ?? o(ex.spec).tokenSecretRef ?? '');
    const secret = await src.client.get(SECRETS, secretName, { namespace: ns });
    const token = Buffer.from(String(o(secret.data).token ?? ''), 'base64').toString('utf8');
    const links = o(o(st.links).external);
    const volumes = a(links.volumes).map(o);
    const server = new URL(src.client.config.server);
    // The link's path on the source API server as we reach it (a remote cluster's links name its own view of its URL).
    const rawPath = (i: number): string => {
      const claim = vm.disks[i].claim;
      const vol = volumes.find((v) => v.name === claim);
      const raw = a(vol?.formats)
        .map(o)
        .find((f) => f.format === 'raw');
      if (!raw) throw new OpenshiftError('ExportNotReady', `export ${ns}/${name} has no raw link for ${claim}`);
      return `${server.pathname.replace(/\/+$/, '')}${new URL(String(raw.url)).pathname}`;
    };
    const link = (i: number) => ({ url: `${server.origin}${rawPath(i)}`, token, cert: String(links.cert ?? '') });
    const open = async (i: number): Promise<DiskBytes> => {
      const claim = vm.disks[i].claim;
      const res = await src.client.stream('GET', rawPath(i), {
        headers: { 'x-kubevirt-export-token': token, Accept: 'application/octet-stream' },
        ...(signal ? { signal } : {}),
      });
      if (res.statusCode !== 200) {
        res.resume();
        throw new OpenshiftError('ExportReadFailed', `export ${ns}/${name} answered HTTP ${res.statusCode} for ${claim}`);
      }
      const size = Number(res.headers['content-length'] ?? NaN);
      if (!Number.isFinite(size)) {
        res.destroy();
        throw new OpenshiftError('ExportReadFailed', `export ${ns}/${name} gave no length for ${claim}`);
      }
      return { size, stream: res };
    };
    return { wasRunning, vm: cur, open, link, close };
  } catch (e) {
    await close().catch(() => undefined);
    throw e instanceof OpenshiftError ? e : sourceError(e);
  }
}

/** Maps a source network (`pod` / `ns/name`) to its destination; undefined: unmapped (validation said so). */
export type NetworkMapper = (network: string) => { type: string; name?: string; namespace?: string } | undefined;

/**
 * The target VirtualMachine from the source's spec: the claims replaced by the transferred
 * DataVolumes (`claims[i]` for disk i), networks mapped (pod → masquerade, multus → bridge,
 * ignored → removed), MACs kept unless `macTaken` says another VM has one, the target name and
 * namespace, and runStrategy from the plan's targetPowerState (`auto`: as the source was).
 */
export function openshiftTargetVm(opts: {
  source: KubeObject;
  vm: OpenshiftVm;
  name: string;
  namespace: string;
  claims: string[];
  network: NetworkMapper;
  macTaken: (mac: string) => boolean;
  power: unknown;
  wasRunning: boolean;
  labels: Record<string, string>;
}): KubeObject {
  const spec = structuredClone(o(opts.source.spec));
  const tpl = o(spec.template);
  const tspec = o(tpl.spec);
  const domain = o(tspec.domain);
  const devices = o(domain.devices);
  const byClaim = new Map(opts.vm.disks.map((d, i) => [d.id, opts.claims[i]]));
  tspec.volumes = a(tspec.volumes).map((v) => {
    const vol = o(v);
    const claim = byClaim.get(String(vol.name));
    return claim ? { name: vol.name, dataVolume: { name: claim } } : vol;
  });
  const dropped = new Set<string>();
  const kept: Obj[] = [];
  for (const n of a(tspec.networks).map(o)) {
    const src = networkOf(n, opts.vm.namespace);
    const dst = src ? opts.network(src) : undefined;
    if (!dst || dst.type === 'ignored') {
      dropped.add(String(n.name));
      continue;
    }
    kept.push(
      dst.type === 'pod' ? { name: n.name, pod: {} } : { name: n.name, multus: { networkName: dst.namespace ? `${dst.namespace}/${dst.name}` : dst.name } },
    );
  }
  tspec.networks = kept;
  devices.interfaces = a(devices.interfaces)
    .map(o)
    .filter((i) => !dropped.has(String(i.name)))
    .map((i) => {
      const net = kept.find((n) => n.name === i.name);
      const { bridge: _b, masquerade: _m, sriov: _s, macAddress, ...rest } = i;
      const mac = typeof macAddress === 'string' && macAddress && !opts.macTaken(macAddress.toLowerCase()) ? { macAddress } : {};
      return { ...rest, ...(net?.pod ? { masquerade: {} } : { bridge: {} }), ...mac };
    });
  domain.devices = devices;
  tspec.domain = domain;
  tpl.spec = tspec;
  delete spec.dataVolumeTemplates;
  delete spec.running;
  const power = opts.power;
  const on = power === 'on' || ((power === undefined || power === 'auto') && opts.wasRunning);
  spec.runStrategy = on ? 'Always' : 'Halted';
  const srcMeta = opts.source.metadata ?? {};
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: {
      name: opts.name,
      namespace: opts.namespace,
      labels: { ...Object.fromEntries(Object.entries(srcMeta.labels ?? {}).filter(([k]) => !k.startsWith('vessel.io/'))), ...opts.labels },
      annotations: { 'forklift.konveyor.io/source-vm-name': `${opts.vm.namespace}/${opts.vm.name}` },
    },
    spec,
  };
}

/** The source inventory VM as read now (for tests and re-checks). */
export { inventoryVm };
