/**
 * Serving VirtualMachineExports, at KubeVirt's export proxy paths below the API server:
 *   GET /api/export.kubevirt.io/v1beta1/namespaces/NS/NAME/volumes/VOL/disk.img      raw
 *   GET /api/export.kubevirt.io/v1beta1/namespaces/NS/NAME/volumes/VOL/disk.img.gz   gzip of raw
 *   GET /api/export.kubevirt.io/v1beta1/namespaces/NS/NAME/(internal|external)/manifests/(all|secret)
 * The export's token (header or query `x-kubevirt-export-token`, as KubeVirt's) authenticates,
 * not a user: it is compared with the `token` key of the Secret in status.tokenSecretRef of
 * that export, in that namespace, so one export's token opens nothing else. A missing or wrong
 * token, or an export that does not exist, is the same 401. The bytes come from the node agent
 * holding the volume (certificate pinned, agent token sent), which converts qcow2 to raw.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { request as httpsRequest } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { stringify } from 'yaml';
import { findByResource, snapshots, storage, vmexport, type KubeObject } from '@vessel/api';
import { agentRefusal, agentTarget } from './agents.ts';
import { ApiError } from './errors.ts';
import type { Resources } from './resources.ts';

const EXPORTS = findByResource('export.kubevirt.io', 'v1beta1', 'virtualmachineexports')!;
const SECRETS = findByResource('', 'v1', 'secrets')!;
const PVCS = findByResource('', 'v1', 'persistentvolumeclaims')!;
const VMS = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const SNAPSHOTS = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshots')!;
const CONTENTS = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshotcontents')!;

type Obj = Record<string, unknown>;
type Link = { volumes?: { name: string }[]; manifests?: { type: string; url: string }[]; cert?: string };

const sha256 = (s: string) => createHash('sha256').update(s).digest();
const denied = () => new ApiError(401, 'Unauthorized', `a valid ${vmexport.EXPORT_TOKEN_HEADER} (header or query parameter) is required for this export`);

/** Absent for any client-side failure (a 404 or a malformed name), so each becomes the same 401. */
const getOrUndefined = (resources: Resources, info: typeof EXPORTS, ns: string, name: string) =>
  resources.get(info, ns, name).catch((e: unknown) => {
    if (e instanceof ApiError && e.code < 500) return undefined;
    throw e;
  });

/** The export, once the request's token is its token; throws 401 otherwise, 409 while it is not Ready. */
async function authorizedExport(resources: Resources, req: IncomingMessage, ns: string, name: string): Promise<{ exp: KubeObject; token: string }> {
  const header = req.headers[vmexport.EXPORT_TOKEN_HEADER];
  const given = (typeof header === 'string' ? header : undefined) ?? new URL(req.url ?? '/', 'https://x').searchParams.get(vmexport.EXPORT_TOKEN_HEADER) ?? '';
  if (!given) throw denied();
  const exp = await getOrUndefined(resources, EXPORTS, ns, name);
  const status = (exp?.status ?? {}) as { tokenSecretRef?: string; phase?: string; conditions?: { type: string; message?: string }[] };
  const secret = exp && status.tokenSecretRef ? await getOrUndefined(resources, SECRETS, ns, status.tokenSecretRef) : undefined;
  const stored = (secret?.data as Record<string, string> | undefined)?.token;
  const token = stored ? Buffer.from(stored, 'base64').toString('utf8') : '';
  // Hashes compare in constant time whatever the lengths.
  if (!exp || !token || !timingSafeEqual(sha256(token), sha256(given))) throw denied();
  if (status.phase !== 'Ready') {
    const why = status.conditions?.find((c) => c.type === 'Ready')?.message;
    throw new ApiError(409, 'Conflict', `VirtualMachineExport ${ns}/${name} is ${status.phase ?? 'Pending'}, not Ready${why ? `: ${why}` : ''}`);
  }
  return { exp, token };
}

/** Where an exported volume's file is and which node's agent reads it. */
async function locate(resources: Resources, exp: KubeObject, ns: string, volume: string): Promise<{ node: string; path: string }> {
  const source = (exp.spec as { source?: { kind?: string; name?: string } }).source;
  const missing = () => new ApiError(404, 'NotFound', `VirtualMachineExport ${ns}/${exp.metadata?.name} has no volume ${volume}`);
  if (source?.kind === 'VirtualMachineSnapshot') {
    const snap = await resources.get(SNAPSHOTS, ns, source.name ?? '');
    const content = await resources.get(CONTENTS, ns, String((snap.status as Obj | undefined)?.virtualMachineSnapshotContentName ?? ''));
    const backups = ((content.spec as Obj | undefined)?.volumeBackups ?? []) as {
      volumeName: string;
      persistentVolumeClaim?: { metadata?: { name?: string } };
    }[];
    const backup = backups.find((b) => (b.persistentVolumeClaim?.metadata?.name ?? b.volumeName) === volume);
    const files = JSON.parse(content.metadata.annotations?.[snapshots.SNAPSHOT_FILES] ?? '{}') as Record<string, string>;
    const node = content.metadata.annotations?.[snapshots.SNAPSHOT_NODE];
    const path = backup && files[backup.volumeName];
    if (!path || !node) throw missing();
    return { node, path };
  }
  const pvc = await getOrUndefined(resources, PVCS, ns, volume);
  const path = pvc?.metadata.annotations?.[storage.VOLUME_PATH];
  const node = pvc?.metadata.annotations?.[storage.SELECTED_NODE];
  if (!path || !node) throw missing();
  return { node, path };
}

/** Serves disk.img / disk.img.gz of one of a Ready export's volumes. */
export async function serveExportVolume(resources: Resources, req: IncomingMessage, res: ServerResponse, p: Record<string, string>): Promise<void> {
  const { exp } = await authorizedExport(resources, req, p.namespace, p.name);
  const links = ((exp.status as Obj).links as { external?: Link } | undefined)?.external;
  if (!links?.volumes?.some((v) => v.name === p.volume))
    throw new ApiError(404, 'NotFound', `VirtualMachineExport ${p.namespace}/${p.name} has no volume ${p.volume}`);
  const { node, path } = await locate(resources, exp, p.namespace, p.volume);
  const format = p.file === vmexport.EXPORT_FORMATS.gzip ? 'gzip' : 'raw';
  const target = await agentTarget(resources, node);
  await new Promise<void>((resolve, reject) => {
    const out = httpsRequest(
      {
        host: target.host,
        port: target.port,
        method: 'GET',
        path: `/v1/export/${encodeURIComponent(p.namespace)}?path=${encodeURIComponent(path)}&format=${format}`,
        headers: { Authorization: `Bearer ${target.token}` },
        ...target.tls,
      },
      (agentRes) => {
        const code = agentRes.statusCode ?? 502;
        if (code >= 400) {
          const chunks: Buffer[] = [];
          agentRes.on('data', (c: Buffer) => chunks.push(c));
          agentRes.on('error', reject);
          agentRes.on('end', () => reject(agentRefusal('stream', code, Buffer.concat(chunks).toString('utf8'), node)));
          return;
        }
        const headers: Record<string, string> = { 'Content-Disposition': `attachment; filename="${p.file}"` };
        for (const h of ['content-type', 'content-length']) if (typeof agentRes.headers[h] === 'string') headers[h] = agentRes.headers[h];
        res.writeHead(code, headers);
        agentRes.pipe(res);
        agentRes.on('end', resolve);
        // A stream cut midway must not look complete: the client's connection is dropped.
        agentRes.on('error', () => {
          res.destroy();
          resolve();
        });
        agentRes.on('aborted', () => res.destroy());
      },
    );
    out.on('error', (e) => reject(new ApiError(502, 'InternalError', `cannot reach the agent of node ${node}: ${e.message}`)));
    res.on('close', () => out.destroy());
    out.end();
  });
}

/** Serves the `all` manifest (VM + DataVolumes + CA) or the `auth-header-secret` one, as YAML. */
export async function serveExportManifest(resources: Resources, req: IncomingMessage, res: ServerResponse, p: Record<string, string>): Promise<void> {
  const { exp, token } = await authorizedExport(resources, req, p.namespace, p.name);
  let docs: KubeObject[];
  if (p.which === 'secret') docs = [vmexport.authHeaderSecret(p.name, token)];
  else {
    const link = ((exp.status as Obj).links as Record<string, Link | undefined> | undefined)?.[p.scope];
    const base = (link?.manifests?.[0]?.url ?? '').replace(/\/(internal|external)\/manifests\/all$/, '');
    const source = (exp.spec as { source?: { kind?: string; name?: string } }).source;
    const volumes = (link?.volumes ?? []).map((v) => v.name);
    let vm: { metadata: Obj; spec: Obj } | undefined;
    const sizes: Record<string, string | undefined> = {};
    if (source?.kind === 'VirtualMachineSnapshot') {
      const snap = await resources.get(SNAPSHOTS, p.namespace, source.name ?? '');
      const content = await resources.get(CONTENTS, p.namespace, String((snap.status as Obj | undefined)?.virtualMachineSnapshotContentName ?? ''));
      const spec = (content.spec ?? {}) as {
        source?: { virtualMachine?: { metadata: Obj; spec: Obj } };
        volumeBackups?: { persistentVolumeClaim?: { metadata?: { name?: string }; spec?: { resources?: { requests?: { storage?: string } } } } }[];
      };
      vm = spec.source?.virtualMachine;
      for (const b of spec.volumeBackups ?? [])
        if (b.persistentVolumeClaim?.metadata?.name) sizes[b.persistentVolumeClaim.metadata.name] = b.persistentVolumeClaim.spec?.resources?.requests?.storage;
    } else {
      if (source?.kind === 'VirtualMachine') {
        const got = await resources.get(VMS, p.namespace, source.name ?? '');
        vm = { metadata: got.metadata as unknown as Obj, spec: (got.spec ?? {}) as Obj };
      }
      for (const v of volumes) {
        const pvc = await getOrUndefined(resources, PVCS, p.namespace, v);
        sizes[v] = (pvc?.spec as { resources?: { requests?: { storage?: string } } } | undefined)?.resources?.requests?.storage;
      }
    }
    docs = vmexport.exportManifests({ exportName: p.name, base, caPem: link?.cert ?? '', vm, claims: volumes.map((name) => ({ name, storage: sizes[name] })) });
  }
  const body = docs.map((d) => stringify(d)).join('---\n');
  res.writeHead(200, { 'Content-Type': 'application/yaml', 'Content-Length': String(Buffer.byteLength(body)) }).end(body);
}
