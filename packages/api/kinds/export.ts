/**
 * KubeVirt VM export (export.kubevirt.io/v1beta1), following virt-api's VMExportAdmitter: the
 * source is a VirtualMachine (kubevirt.io), a VirtualMachineSnapshot (snapshot.kubevirt.io) or a
 * PersistentVolumeClaim (core group, apiGroup empty or unset) in the export's own namespace;
 * ttlDuration is a Go duration; the spec is immutable. Also the pure helpers the controller,
 * the API server and the CLI share: the ttl parser, the export's URL paths and the token header.
 */
import { invalid, notSupported, required } from '../errors.ts';
import type { KubeObject } from '../types.ts';
import { KUBEVIRT_GROUP, SNAPSHOT_GROUP, immutableSpec } from './snapshot.ts';
import { isSet, obj, str, type SemanticContext } from './util.ts';

/** The kinds an export may read, with the API group each belongs to ('' = core). */
export const EXPORT_SOURCE_KINDS: Readonly<Record<string, string>> = {
  VirtualMachine: KUBEVIRT_GROUP,
  VirtualMachineSnapshot: SNAPSHOT_GROUP,
  PersistentVolumeClaim: '',
};

/** KubeVirt's header (and query parameter) carrying an export's token. */
export const EXPORT_TOKEN_HEADER = 'x-kubevirt-export-token';
/** KubeVirt's DefaultDurationTTL. */
export const DEFAULT_EXPORT_TTL_MS = 2 * 3600_000;
/** The formats a volume is served in (KubeVirt's KubeVirtRaw and KubeVirtGz) and their file names. */
export const EXPORT_FORMATS = { raw: 'disk.img', gzip: 'disk.img.gz' } as const;
export type ExportFormat = keyof typeof EXPORT_FORMATS;

/** Where an export is served below the API server's URL (KubeVirt's export proxy path). */
export function exportBasePath(namespace: string, name: string): string {
  return `/api/export.kubevirt.io/v1beta1/namespaces/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`;
}

const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3600_000 };

/** A Go duration ("2h", "1h30m", "90s", "0.5h") in milliseconds; undefined when malformed or negative. */
export function parseGoDuration(s: string): number | undefined {
  if (s === '0') return 0;
  const re = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(s); m; m = re.exec(s)) {
    total += Number(m[1]) * UNIT_MS[m[2]];
    matched = re.lastIndex;
  }
  return s !== '' && matched === s.length ? total : undefined;
}

export function validateVirtualMachineExport(o: KubeObject, ctx: SemanticContext): void {
  immutableSpec(o, ctx, 'VirtualMachineExport');
  const spec = obj(o.spec);
  if (ctx.op !== 'create' || !spec) return;
  const causes = ctx.causes;
  const source = obj(spec.source);
  if (source) {
    // A missing source, kind or name is reported by structural validation (they are required).
    const kind = str(source.kind);
    const group = kind !== undefined ? EXPORT_SOURCE_KINDS[kind] : undefined;
    if (kind === '') causes.push(required('spec.source.kind', 'set kind: VirtualMachine, VirtualMachineSnapshot or PersistentVolumeClaim'));
    else if (kind !== undefined && group === undefined) causes.push(notSupported('spec.source.kind', kind, Object.keys(EXPORT_SOURCE_KINDS)));
    const apiGroup = isSet(source.apiGroup) ? str(source.apiGroup) : '';
    if (group !== undefined && apiGroup !== undefined && apiGroup !== group) {
      causes.push(
        group
          ? invalid('spec.source.apiGroup', apiGroup, `a ${kind} is in API group ${group}`)
          : invalid('spec.source.apiGroup', apiGroup, 'a PersistentVolumeClaim is in the core group: leave apiGroup out'),
      );
    }
    if (str(source.name) === '') causes.push(required('spec.source.name', 'name the object to export'));
  }
  const ttl = str(spec.ttlDuration);
  if (ttl !== undefined && parseGoDuration(ttl) === undefined)
    causes.push(invalid('spec.ttlDuration', ttl, 'a duration such as "2h", "30m" or "1h30m" (units h, m, s, ms)'));
  const secret = str(spec.tokenSecretRef);
  if (secret === '') causes.push(required('spec.tokenSecretRef', 'name a Secret with a `token` key, or leave it out for a generated one'));
}

type Obj = Record<string, unknown>;

/** The name of the Secret an export generates for its token when spec.tokenSecretRef is unset. */
export const generatedTokenSecretName = (exportName: string) => `export-token-${exportName}`;
/** KubeVirt's names for the objects its `all` manifest adds next to the VM and DataVolumes. */
export const headerSecretName = (exportName: string) => `header-secret-${exportName}`;
export const caConfigMapName = (exportName: string) => `export-ca-cm-${exportName}`;

/** KubeVirt's `auth-header-secret` manifest: a Secret CDI's secretExtraHeaders read (`Name:value`). */
export function authHeaderSecret(exportName: string, token: string): KubeObject {
  return { apiVersion: 'v1', kind: 'Secret', metadata: { name: headerSecretName(exportName) }, stringData: { token: `${EXPORT_TOKEN_HEADER}:${token}` } };
}

/**
 * KubeVirt's `all` manifest: the CA as a ConfigMap, the VM (when the source has one) without
 * its status, identity and Vessel's own keys, and one DataVolume per exported claim importing
 * the export's gzip URL with the header Secret. Applied in another cluster, it rebuilds the VM.
 */
export function exportManifests(o: {
  exportName: string;
  base: string;
  caPem: string;
  vm?: { metadata: Obj; spec: Obj };
  claims: { name: string; storage?: string }[];
}): KubeObject[] {
  const out: KubeObject[] = [{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: caConfigMapName(o.exportName) }, data: { 'ca.pem': o.caPem } }];
  const clean = (m: Record<string, string> | undefined) => {
    const kept = Object.fromEntries(
      Object.entries(m ?? {}).filter(([k]) => !k.includes('vessel.io/') && k !== 'kubectl.kubernetes.io/last-applied-configuration'),
    );
    return Object.keys(kept).length ? kept : undefined;
  };
  if (o.vm) {
    const spec = structuredClone(o.vm.spec);
    delete spec.dataVolumeTemplates; // the DataVolumes below replace them: they import the exported bytes
    const meta = o.vm.metadata as { name?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
    out.push({
      apiVersion: 'kubevirt.io/v1',
      kind: 'VirtualMachine',
      metadata: { name: meta.name!, labels: clean(meta.labels), annotations: clean(meta.annotations) },
      spec,
    });
  }
  for (const claim of o.claims) {
    out.push({
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name: claim.name },
      spec: {
        source: {
          http: {
            url: `${o.base}/volumes/${encodeURIComponent(claim.name)}/${EXPORT_FORMATS.gzip}`,
            secretExtraHeaders: [headerSecretName(o.exportName)],
            certConfigMap: caConfigMapName(o.exportName),
          },
        },
        storage: claim.storage ? { resources: { requests: { storage: claim.storage } } } : {},
      },
    });
  }
  return out;
}
