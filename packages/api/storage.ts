/**
 * Names shared by the storage controllers (server) and the node agent's volume manager:
 * where a claim's volume lives and who fills it. Kubernetes' and CDI's own annotation keys
 * where one exists, so tools that read them keep working.
 */
import type { KubeObject } from './types.ts';

/** The node that provisions a claim and holds its volume (set by the volume binder, as Kubernetes' scheduler does). */
export const SELECTED_NODE = 'volume.kubernetes.io/selected-node';
/** On a claim: the DataVolume that fills it (CDI's key); the agent populates instead of provisioning blank. */
export const POPULATED_FOR = 'cdi.kubevirt.io/storage.populatedFor';
/** On a claim: the qcow2 file of its volume on the selected node (or on the shared pool). */
export const VOLUME_PATH = 'vessel.io/volume-path';
/**
 * On a claim: JSON list of the copies of its volume that migration targets kept after a post-copy
 * that did not complete, `[{node, file, migration}]` (file: a name in the claim's namespace
 * directory of that node's pool, never a path); they go when the claim is deleted.
 */
export const POSTCOPY_KEPT = 'vessel.io/postcopy-kept';
/** On a claim: the pool (StorageClass parameters.pool) its volume was made in. */
export const VOLUME_POOL = 'vessel.io/pool';
/** On a claim: how its volume was made from another one: "linked" (qcow2 backing file) or "full". */
export const CLONE_TYPE = 'vessel.io/clone-type';
/** On a claim: sha256 of the current upload token and its expiry, "sha256hex:unixSeconds" (see the upload proxy). */
export const UPLOAD_TOKEN = 'vessel.io/upload-token';
/** The provisioner of Vessel's StorageClasses. */
export const PROVISIONER = 'vessel.io/qcow2';
/** On a claim the DataVolume controller made: the claim it is cloned from, "namespace/name". */
export const CLONE_SOURCE = 'vessel.io/clone-source';
/** On a Node: JSON {poolName: directory} of the pools the agent serves. */
export const NODE_POOLS = 'vessel.io/pools';
/** On a Node: sha256 of the agent's self-signed TLS certificate (DER), which the server pins. */
export const NODE_CERT_SHA256 = 'vessel.io/agent-cert-sha256';
/** On a Node: the agent's self-signed certificate (PEM), which the server trusts as that agent's only CA. */
export const NODE_CERT = 'vessel.io/agent-cert';
/** On a Node: the agent's migration CA (PEM); peers verify its migration TLS certificate with it. */
export const NODE_MIGRATION_CA = 'vessel.io/migration-ca';
/** Node annotation the node-lifecycle controller sets: seconds of silence after which it restarts the node's VMs elsewhere (the agent's watchdog ends before). */
export const NODE_FAILOVER_AFTER = 'vessel.io/failover-after-seconds';
/** Kubernetes' finalizer that keeps a claim while it is in use; the agent removes it once the volume is gone. */
export const PVC_PROTECTION = 'kubernetes.io/pvc-protection';
/** On a StorageClass/claim: ask to bind now even with WaitForFirstConsumer (CDI's key, set for golden images). */
export const BIND_IMMEDIATE = 'cdi.kubevirt.io/storage.bind.immediate.requested';
/** The Secret (kube-system) whose `token` the server presents to agents. */
export const AGENT_AUTH_SECRET = 'vessel-agent-auth';
/** Golden images in this namespace are readable by every tenant (OpenShift's openshift-virtualization-os-images). */
export const GOLDEN_IMAGES_NAMESPACE = 'vessel-images';

export type DataVolumePhase =
  | 'Pending'
  | 'PVCBound'
  | 'ImportScheduled'
  | 'ImportInProgress'
  | 'CloneScheduled'
  | 'CloneInProgress'
  | 'UploadScheduled'
  | 'UploadReady'
  | 'WaitForFirstConsumer'
  | 'Succeeded'
  | 'Failed'
  | 'Unknown';

/** Where a DataVolume's bytes come from, after resolving sourceRef: the agent's view of spec.source. */
export type PopulationSource =
  | { kind: 'http'; url: string; certConfigMap?: string; secretRef?: string; checksum?: string; secretExtraHeaders?: string[] }
  | { kind: 'registry'; url: string; certConfigMap?: string; secretRef?: string }
  | { kind: 'upload' }
  | { kind: 'blank' }
  | { kind: 'pvc'; namespace: string; name: string };

/** On a DataVolume: "sha256:<hex>" (or sha512/sha1/md5) the http source's bytes must match (CDI's v1beta1 type has no field for it). */
export const CHECKSUM = 'cdi.vessel.io/checksum';

/**
 * On an upload DataVolume a Forklift migration made: `{"package": "/abs/x.ova", "member":
 * "disk.vmdk"}`, the OVA disk it waits for. A node agent whose OVA roots hold the package reads
 * the member in place instead (issue 14); other agents wait for the upload as usual.
 */
export const OVA_SOURCE = 'forklift.vessel.io/ova-source';

/** On a claim a restore makes: the snapshot file its volume is a linked clone of. */
export const RESTORE_SOURCE = 'vessel.io/restore-source';

/** The population source of a DataVolume spec (sourceRef must already be resolved to a pvc source). */
export function populationSource(spec: Record<string, unknown>, namespace: string, annotations: Record<string, string> = {}): PopulationSource | undefined {
  const source = (spec.source ?? {}) as Record<string, Record<string, unknown> | undefined>;
  const s = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);
  if (source.http)
    return {
      kind: 'http',
      url: String(source.http.url),
      certConfigMap: s(source.http.certConfigMap),
      secretRef: s(source.http.secretRef),
      checksum: s(annotations[CHECKSUM]),
      ...(Array.isArray(source.http.secretExtraHeaders) && source.http.secretExtraHeaders.length
        ? { secretExtraHeaders: source.http.secretExtraHeaders.map(String) }
        : {}),
    };
  if (source.registry)
    return { kind: 'registry', url: String(source.registry.url), certConfigMap: s(source.registry.certConfigMap), secretRef: s(source.registry.secretRef) };
  if (source.upload) return { kind: 'upload' };
  if (source.blank) return { kind: 'blank' };
  if (source.pvc) return { kind: 'pvc', namespace: s(source.pvc.namespace) ?? namespace, name: String(source.pvc.name) };
  return undefined;
}

/** The phase names a DataVolume shows while each kind of source is scheduled / running. */
export function phasesFor(kind: PopulationSource['kind']): { scheduled: DataVolumePhase; running: DataVolumePhase } {
  if (kind === 'pvc') return { scheduled: 'CloneScheduled', running: 'CloneInProgress' };
  if (kind === 'upload') return { scheduled: 'UploadScheduled', running: 'UploadReady' };
  return { scheduled: 'ImportScheduled', running: 'ImportInProgress' };
}

export interface NodePool {
  dir: string;
  shared: boolean;
}

/** The pools a Node's agent serves (its NODE_POOLS annotation; none when unreadable). */
export function nodePools(node: KubeObject): Record<string, NodePool> {
  const raw = node.metadata?.annotations?.[NODE_POOLS];
  try {
    return raw ? (JSON.parse(raw) as Record<string, NodePool>) : {};
  } catch {
    return {};
  }
}

export function isNodeReady(node: KubeObject): boolean {
  const conds = (node.status as { conditions?: { type: string; status: string }[] } | undefined)?.conditions ?? [];
  return conds.some((c) => c.type === 'Ready' && c.status === 'True');
}
