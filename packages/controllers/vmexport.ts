/**
 * VirtualMachineExports (export.kubevirt.io/v1beta1), as KubeVirt's export controller keeps
 * them: the token Secret (generated when spec.tokenSecretRef is unset, owned by the export),
 * the phase (Pending while the source is missing, not ready or in use by a running VMI; Ready
 * with the links once every volume can be read; Terminated when its ttl is over, after which
 * the export is deleted) and the links. Vessel has no export server pod: the API server serves
 * the bytes itself (apiserver/vmexport.ts), so the internal and external links both point at
 * the API server's URL and `cert` is its CA. A Ready export of a VM keeps the VM from starting
 * (controllers/vm.ts asks exportBlocking).
 */
import { randomBytes } from 'node:crypto';
import type { Client } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import { BY_NAMESPACE, byNamespace, cacheKey, Controller, type Log, type Informer, type KubeObject, setCondition, updateStatus } from '@vessel/runtime';
import { refs, phaseOf, claimVolumes, snapshots, vmexport } from '@vessel/api';

const { PVCS, SECRETS, VMEXPORTS, VMIS, VMS, VMSNAPSHOTCONTENTS, VMSNAPSHOTS } = refs;

type Obj = Record<string, unknown>;
const FINAL_VMI = new Set(['Succeeded', 'Failed']);
/** A long ttl is re-checked hourly rather than by one timer of days. */
const MAX_WAIT_MS = 3600_000;

interface ExportSpec {
  source?: { apiGroup?: string; kind?: string; name?: string };
  tokenSecretRef?: string;
  ttlDuration?: string;
}

/** What the source offers once it can be exported: the claims to serve, and the VM it belongs to. */
export type SourceState =
  { ready: true; volumes: string[]; virtualMachineName?: string } | { ready: false; reason: string; message: string; virtualMachineName?: string };

/** The objects the source decision reads (caches in the controller, plain maps in tests). */
export interface SourceView {
  vm(name: string): KubeObject | undefined;
  vmi(name: string): KubeObject | undefined;
  pvc(name: string): KubeObject | undefined;
  snapshot(name: string): KubeObject | undefined;
  content(name: string): KubeObject | undefined;
  /** The live VMIs of the namespace (those that may hold a claim open). */
  liveVmis(): KubeObject[];
}

const live = (vmi: KubeObject | undefined) => !!vmi && !FINAL_VMI.has(phaseOf(vmi));

/** Whether an export of this source can be served now, and which volumes (claim names) it serves. Pure. */
export function sourceState(spec: ExportSpec, view: SourceView): SourceState {
  const kind = spec.source?.kind;
  const name = spec.source?.name ?? '';
  const bound = (claims: string[], vmName?: string): SourceState => {
    for (const c of claims) {
      const pvc = view.pvc(c);
      if (!pvc) return { ready: false, reason: 'PVCNotFound', message: `PersistentVolumeClaim ${c} does not exist`, virtualMachineName: vmName };
      if ((pvc.status as Obj | undefined)?.phase !== 'Bound')
        return { ready: false, reason: 'PVCPending', message: `PersistentVolumeClaim ${c} is not Bound yet`, virtualMachineName: vmName };
    }
    return { ready: true, volumes: claims, virtualMachineName: vmName };
  };
  if (kind === 'VirtualMachine') {
    const vm = view.vm(name);
    if (!vm) return { ready: false, reason: 'VMNotFound', message: `VirtualMachine ${name} does not exist` };
    if (live(view.vmi(name)))
      return { ready: false, reason: 'InUse', message: `VirtualMachine ${name} is running: the export waits until it is stopped`, virtualMachineName: name };
    const claims = [...new Set(claimVolumes(vm).map((c) => c.claim))];
    if (!claims.length) return { ready: false, reason: 'NoVolumes', message: `VirtualMachine ${name} has no volumes to export`, virtualMachineName: name };
    // Another VM's running guest may hold one of the disks too.
    const other = view.liveVmis().find((vmi) => claimVolumes(vmi).some((c) => claims.includes(c.claim)));
    if (other)
      return {
        ready: false,
        reason: 'InUse',
        message: `a volume of VirtualMachine ${name} is in use by VirtualMachineInstance ${other.metadata.name}: the export waits until it stops`,
        virtualMachineName: name,
      };
    return bound(claims, name);
  }
  if (kind === 'PersistentVolumeClaim') {
    const user = view.liveVmis().find((vmi) => claimVolumes(vmi).some((c) => c.claim === name));
    if (user)
      return {
        ready: false,
        reason: 'InUse',
        message: `PersistentVolumeClaim ${name} is in use by VirtualMachineInstance ${user.metadata.name}: the export waits until it stops`,
      };
    return bound([name]);
  }
  if (kind === 'VirtualMachineSnapshot') {
    const snap = view.snapshot(name);
    const vmName = (snap?.spec as { source?: { name?: string } } | undefined)?.source?.name;
    if (!snap) return { ready: false, reason: 'SnapshotNotFound', message: `VirtualMachineSnapshot ${name} does not exist` };
    const status = (snap.status ?? {}) as { readyToUse?: boolean; virtualMachineSnapshotContentName?: string };
    const content = status.virtualMachineSnapshotContentName ? view.content(status.virtualMachineSnapshotContentName) : undefined;
    if (status.readyToUse !== true || !content)
      return { ready: false, reason: 'SnapshotNotReady', message: `VirtualMachineSnapshot ${name} is not ready to use yet`, virtualMachineName: vmName };
    const files = snapshotFiles(content);
    const volumes = snapshotVolumes(content)
      .filter((v) => files[v.volumeName])
      .map((v) => v.claim);
    if (!volumes.length) return { ready: false, reason: 'NoVolumes', message: `VirtualMachineSnapshot ${name} holds no volumes`, virtualMachineName: vmName };
    return { ready: true, volumes, virtualMachineName: vmName };
  }
  return { ready: false, reason: 'UnsupportedSource', message: `cannot export a ${kind ?? 'missing'} source` };
}

/** A snapshot content's volume files (volume name → file), as the agent recorded them. */
export function snapshotFiles(content: KubeObject): Record<string, string> {
  try {
    return JSON.parse(content.metadata.annotations?.[snapshots.SNAPSHOT_FILES] ?? '{}') as Record<string, string>;
  } catch {
    return {};
  }
}

/** A snapshot content's volumes: the VM's volume name and the claim it backed up. */
export function snapshotVolumes(content: KubeObject): { volumeName: string; claim: string; storage?: string }[] {
  const backups = ((content.spec as Obj | undefined)?.volumeBackups ?? []) as {
    volumeName: string;
    persistentVolumeClaim?: { metadata?: { name?: string }; spec?: { resources?: { requests?: { storage?: string } } } };
  }[];
  return backups.map((b) => ({
    volumeName: b.volumeName,
    claim: b.persistentVolumeClaim?.metadata?.name ?? b.volumeName,
    storage: b.persistentVolumeClaim?.spec?.resources?.requests?.storage,
  }));
}

/** The export's ttl in ms (spec.ttlDuration, KubeVirt's 2 h default). */
export function ttlMs(spec: ExportSpec): number {
  return (spec.ttlDuration !== undefined ? vmexport.parseGoDuration(spec.ttlDuration) : undefined) ?? vmexport.DEFAULT_EXPORT_TTL_MS;
}

/** status.links for a Ready export served below `server` (the API server's URL). */
export function exportLinks(server: string, caPem: string, namespace: string, name: string, volumes: string[]): Obj {
  const base = `${server}${vmexport.exportBasePath(namespace, name)}`;
  const link = (scope: 'internal' | 'external') => ({
    cert: caPem,
    volumes: volumes.map((v) => ({
      name: v,
      formats: (Object.keys(vmexport.EXPORT_FORMATS) as vmexport.ExportFormat[]).map((format) => ({
        format,
        url: `${base}/volumes/${encodeURIComponent(v)}/${vmexport.EXPORT_FORMATS[format]}`,
      })),
    })),
    manifests: [
      { type: 'all', url: `${base}/${scope}/manifests/all` },
      { type: 'auth-header-secret', url: `${base}/${scope}/manifests/secret` },
    ],
  });
  return { internal: link('internal'), external: link('external') };
}

/** The Ready export of VirtualMachine `vmName` among `exports` (one namespace's), which keeps the VM from starting. */
export function exportBlocking(exports: readonly KubeObject[], vmName: string): KubeObject | undefined {
  // A snapshot's export reads files nothing writes: only an export of the VM itself holds it.
  return exports.find((e) => {
    const source = ((e.spec ?? {}) as ExportSpec).source;
    return source?.kind === 'VirtualMachine' && source.name === vmName && !e.metadata.deletionTimestamp && phaseOf(e) === 'Ready';
  });
}

export class VirtualMachineExportController extends Controller {
  private readonly exports: Informer;
  private readonly vms: Informer;
  private readonly vmis: Informer;
  private readonly pvcs: Informer;
  private readonly snapshots: Informer;
  private readonly contents: Informer;
  private readonly secrets: Informer;

  constructor(
    client: Client,
    log?: Log,
    private readonly now: () => number = Date.now,
  ) {
    super('vmexport', client, log);
    this.exports = this.inform(VMEXPORTS).addIndex(BY_NAMESPACE, byNamespace);
    // Any change in a namespace may change its exports' readiness: few exports, so all of them are looked at.
    const inNamespace = (o: KubeObject) => (o.metadata.namespace ? this.exports.byIndex(BY_NAMESPACE, o.metadata.namespace).map(cacheKey) : []);
    this.vms = this.inform(VMS, inNamespace);
    this.vmis = this.inform(VMIS, inNamespace);
    this.pvcs = this.inform(PVCS, inNamespace);
    this.snapshots = this.inform(VMSNAPSHOTS, inNamespace);
    this.contents = this.inform(VMSNAPSHOTCONTENTS, inNamespace);
    this.secrets = this.inform(SECRETS, inNamespace);
  }

  protected async reconcile(key: string): Promise<void> {
    const exp = this.exports.get(key);
    if (!exp || exp.metadata.deletionTimestamp) return;
    const ns = exp.metadata.namespace!;
    const name = exp.metadata.name;
    const spec = (exp.spec ?? {}) as ExportSpec;

    const expires = Date.parse(exp.metadata.creationTimestamp ?? new Date(this.now()).toISOString()) + ttlMs(spec);
    if (this.now() >= expires) {
      await updateStatus(this.client, VMEXPORTS, ns, name, (s) => {
        s.phase = 'Terminated';
        delete s.links;
        setCondition(s, { type: 'Ready', status: 'False', reason: 'TTLExpired', message: `the export's ttl (${spec.ttlDuration ?? '2h'}) is over` }, false);
      });
      this.log(`vmexport: ${key}: ttl over, deleting it`);
      await this.client.delete(VMEXPORTS, name, { namespace: ns }).catch((e: unknown) => {
        if (!isStatusError(e, 'NotFound')) throw e;
      });
      return;
    }
    this.queue.addAfter(key, Math.min(MAX_WAIT_MS, expires - this.now() + 50));

    const secretName = spec.tokenSecretRef ?? vmexport.generatedTokenSecretName(name);
    const secret = this.secrets.get(`${ns}/${secretName}`);
    if (!secret && !spec.tokenSecretRef) await this.createTokenSecret(exp, secretName);
    const token = secret && (secret.data as Record<string, string> | undefined)?.token;

    const view: SourceView = {
      vm: (n) => this.vms.get(`${ns}/${n}`),
      vmi: (n) => this.vmis.get(`${ns}/${n}`),
      pvc: (n) => this.pvcs.get(`${ns}/${n}`),
      snapshot: (n) => this.snapshots.get(`${ns}/${n}`),
      content: (n) => this.contents.get(`${ns}/${n}`),
      liveVmis: () => this.vmis.list().filter((v) => v.metadata.namespace === ns && live(v)),
    };
    let state = sourceState(spec, view);
    if (state.ready && spec.tokenSecretRef && !token)
      state = {
        ready: false,
        reason: 'TokenSecretMissing',
        message: `Secret ${secretName} with a \`token\` key does not exist`,
        virtualMachineName: state.virtualMachineName,
      };
    else if (state.ready && !token) state = { ready: false, reason: 'TokenSecretPending', message: `waiting for Secret ${secretName}` };

    await updateStatus(this.client, VMEXPORTS, ns, name, (s) => {
      s.tokenSecretRef = secretName;
      s.ttlExpirationTime = new Date(expires).toISOString().replace(/\.\d{3}Z$/, 'Z');
      if (state.virtualMachineName) s.virtualMachineName = state.virtualMachineName;
      if (state.ready) {
        s.phase = 'Ready';
        s.links = exportLinks(this.client.config.server, this.client.config.caPem ?? '', ns, name, state.volumes);
        setCondition(s, { type: 'Ready', status: 'True', reason: 'PodReady', message: '' }, false);
        setCondition(s, { type: 'PVCReady', status: 'True', reason: 'Bound', message: '' }, false);
      } else {
        s.phase = 'Pending';
        delete s.links;
        setCondition(s, { type: 'Ready', status: 'False', reason: state.reason, message: state.message }, false);
      }
    });
  }

  private async createTokenSecret(exp: KubeObject, secretName: string): Promise<void> {
    try {
      await this.client.create(
        SECRETS,
        {
          apiVersion: 'v1',
          kind: 'Secret',
          type: 'Opaque',
          metadata: {
            name: secretName,
            namespace: exp.metadata.namespace,
            ownerReferences: [
              { apiVersion: 'export.kubevirt.io/v1beta1', kind: 'VirtualMachineExport', name: exp.metadata.name, uid: exp.metadata.uid!, controller: true },
            ],
          },
          data: { token: Buffer.from(randomBytes(24).toString('base64url')).toString('base64') },
        },
        { namespace: exp.metadata.namespace },
      );
    } catch (e) {
      if (!isStatusError(e, 'AlreadyExists')) throw e;
    }
  }
}
