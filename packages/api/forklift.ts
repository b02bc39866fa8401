/**
 * The migration toolkit's conventions shared by its controller and the CLI (docs/forklift.md):
 * where a provider's inventory is published, and the per-VM status a Migration reports.
 */
import { createHash } from 'node:crypto';

/** The ConfigMap, in the provider's namespace and owned by it, holding its inventory as JSON under INVENTORY_KEY. */
export const inventoryConfigMapName = (provider: string): string => `${provider}-inventory`;
export const INVENTORY_KEY = 'inventory.json';
/** Label on the inventory ConfigMap: the provider's name. */
export const PROVIDER_LABEL = 'forklift.konveyor.io/provider';
/** The collections `vessel inventory PROVIDER KIND` lists. */
export const INVENTORY_KINDS = ['vms', 'networks', 'datastores', 'hosts'] as const;
export type InventoryKind = (typeof INVENTORY_KINDS)[number];

/** One unit of a Migration's progress (Forklift's task): a step, or a disk's transfer within one. */
export interface MigrationTask {
  name: string;
  phase: string;
  progress: { total: number; completed: number };
  annotations?: Record<string, string>;
  started?: string;
  completed?: string;
}
/** A step of a VM's pipeline (Initialize, DiskTransfer, VirtualMachineCreation...), with its disk tasks. */
export interface MigrationStep extends MigrationTask {
  tasks?: MigrationTask[];
  error?: { phase: string; reasons: string[] };
  /** What the step is doing now (ImageConversion: virt-v2v's stage) and the warnings it gave (Forklift's shape). */
  reason?: string;
  warning?: { phase: string; reasons: string[] };
}
/** Hook annotation naming a script the administrator registered (a file name in `--forklift-hook-dir`). */
export const HOOK_SCRIPT_ANNOTATION = 'forklift.vessel.io/hook-script';
/** Hook annotation naming an http(s) URL the hook's payload is POSTed to. */
export const HOOK_URL_ANNOTATION = 'forklift.vessel.io/hook-url';
/** What a registered script's name may be: one path component, no `..`. */
export const HOOK_SCRIPT_NAME = /^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** A VM in a Migration's `status.vms`. */
export interface MigrationVmStatus {
  id: string;
  name: string;
  namespace?: string;
  newName?: string;
  phase: string;
  pipeline: MigrationStep[];
  started?: string;
  completed?: string;
  error?: { phase: string; reasons: string[] };
  conditions?: Record<string, unknown>[];
}

/**
 * Guest conversion (virt-v2v, the ImageConversion step): the Forklift controller cannot touch
 * node files, so it asks the agent of the node holding the VM's volumes through reserved
 * annotations on the first disk's claim (only the control plane and agents may set `vessel.io/`
 * keys), as clones and restores are asked for; the agent answers on the same claim.
 */
/** On a claim: ConversionRequest (JSON), set by the Forklift controller. */
export const CONVERT_REQUEST = 'vessel.io/convert';
/** On a claim: ConversionStatus (JSON), written by the agent that runs virt-v2v. */
export const CONVERSION_STATUS = 'vessel.io/conversion';
/** Node label the agent sets when virt-v2v (with nbdkit and libnbd's tools) works there: virt-v2v's version. */
export const NODE_VIRT_V2V = 'vessel.io/virt-v2v';

export interface ConversionRequest {
  /** Who asks (migration uid and VM id): a new id runs again, the same id is answered once. */
  id: string;
  /** The VM's disk claims in the claim's namespace, in boot order (this claim first). */
  claims: string[];
  firmware: 'bios' | 'efi';
  /** For the guest description virt-v2v reads (libvirt XML). */
  name: string;
  memoryMB: number;
  cpus: number;
}

export interface ConversionStatus {
  id: string;
  phase: 'Running' | 'Succeeded' | 'Failed';
  /** The stage virt-v2v is in (its progress messages) and how many of the expected ones passed. */
  stage?: string;
  stages?: { completed: number; total: number };
  /** On failure, virt-v2v's reason (its error message) or the agent's. */
  message?: string;
  warnings?: string[];
  started?: string;
  completed?: string;
  /** Seconds virt-v2v ran. */
  seconds?: number;
}

/**
 * Warm migration (docs/forklift.md, "Warm migration"): the Forklift controller asks the agents
 * through reserved annotations, as for conversion. On the target claim: WarmExportRequest, and
 * the agent holding its volume answers WarmExportStatus (its NBD export, TLS-PSK). On the source
 * VMI: WarmCopyRequest, one disk's round at a time, and the agent running it answers
 * WarmCopyStatus. The PSK itself is never in an annotation (whoever reads a claim or a VMI, a
 * viewer too, would get it): the target's agent writes it to a Secret in the claim's namespace
 * (warmPskSecretName, type WARM_PSK_SECRET_TYPE, owned by the claim) and the annotations name it.
 */
export const WARM_EXPORT = 'vessel.io/warm-export';
export const WARM_EXPORT_STATUS = 'vessel.io/warm-export-status';
export const WARM_COPY = 'vessel.io/warm-copy';
export const WARM_COPY_STATUS = 'vessel.io/warm-copy-status';
/** The type of a warm export's PSK Secret (data: `identity`, `key` hex); the source's agent reads no other. */
export const WARM_PSK_SECRET_TYPE = 'vessel.io/warm-psk';
/** Label on a warm export's PSK Secret: the claim it exports. */
export const WARM_PSK_LABEL = 'vessel.io/warm-export';

/** The PSK Secret's name for export request `id` of `claim`: the same for the agent and the controller, a DNS-1123 name whatever the id holds. */
export function warmPskSecretName(id: string, claim: string): string {
  return `vessel-warm-psk-${createHash('sha256').update(`${id}\n${claim}`).digest('hex').slice(0, 24)}`;
}

export interface WarmExportRequest {
  /** Who asks (migration uid and VM id); `stop`: the export goes. */
  id: string;
  stop?: boolean;
}
export interface WarmExportStatus {
  id: string;
  phase: 'Ready' | 'Failed' | 'Stopped';
  address?: string;
  export?: string;
  /** The PSK Secret in the claim's namespace (warmPskSecretName). */
  secret?: string;
  message?: string;
}
export interface WarmCopyRequest {
  id: string;
  /** A new seq is a new round; the same seq is answered once. */
  seq: number;
  /** The VMI's volume; `end`: tracking and NBD nodes of every disk go. */
  volume?: string;
  mode?: 'full' | 'incremental';
  /** The target's export and where its PSK Secret is (a reference, never the key). */
  target?: { address: string; export: string; secret: { namespace: string; name: string } };
  end?: boolean;
}
export interface WarmCopyStatus {
  id: string;
  seq: number;
  phase: 'Running' | 'Succeeded' | 'Failed';
  done?: number;
  total?: number;
  /** WarmNoBitmap: no change tracking (the caller goes back to full). */
  code?: string;
  message?: string;
}
