/**
 * The ImageConversion step (Forklift's name and place: after DiskTransfer, before
 * VirtualMachineCreation): which VMs go through virt-v2v, the plan's Warning concern when no
 * node can run it, and the request to the agent holding the volumes (the `vessel.io/convert`
 * annotation on the first disk's claim, answered in `vessel.io/conversion`: agent
 * storage/convert.ts). The controller never touches node files.
 */
import type { Client } from '@vessel/client';
import { forklift, refs, type KubeObject } from '@vessel/api';
import type { InventoryVm } from './ova.ts';
import type { Concern, PlanVmResult } from './validation.ts';

const { PVCS } = refs;
const { CONVERT_REQUEST, CONVERSION_STATUS } = forklift;
type Obj = Record<string, unknown>;
const o = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});

export const STEP = 'ImageConversion';
export const SKIPPED_MESSAGE = 'guest conversion skipped: virt-v2v is not installed';

/**
 * The guest's OS family from its OVF `vmw:osType` / description or vSphere guestId, when it is
 * one virt-v2v converts (Windows: virtio drivers, VMware Tools removed; Linux: initramfs with
 * virtio, boot config, VMware Tools removed); undefined for other or unknown OSes, which
 * virt-v2v's inspection cannot handle.
 */
export function osFamily(osType: string): 'windows' | 'linux' | undefined {
  if (/^win|windows/i.test(osType)) return 'windows';
  if (/linux|rhel|centos|debian|ubuntu|sles|suse|fedora|oracle|rocky|alma|photon|coreos|asianux|mandr|amazon/i.test(osType)) return 'linux';
  return undefined;
}

/**
 * Whether a VM of a plan goes through virt-v2v. Forklift converts every vSphere and OVA guest
 * of a cold migration; Vessel does so for the guests whose OS family it recognises (the only
 * ones virt-v2v can inspect), unless the plan says `skipGuestConversion: true` (Forklift's
 * opt-out). Every VM of an inventory comes from an `ova` or `vsphere` provider.
 */
export function conversionWanted(vm: InventoryVm, planSpec: Obj): boolean {
  return planSpec.skipGuestConversion !== true && osFamily(vm.osType) !== undefined;
}

/** The plan's Warn concern: VMs that want conversion while no Ready node has virt-v2v (they migrate unconverted). */
export function conversionConcerns(vms: PlanVmResult[], planSpec: Obj, installed: boolean): Concern[] {
  if (installed) return [];
  const items = vms.filter((v) => conversionWanted(v.vm, planSpec)).map((v) => `id:${v.vm.id} name:'${v.vm.name}'`);
  return items.length ? [{ type: 'GuestConversionSkipped', status: 'True', category: 'Warn', reason: 'NotInstalled', message: SKIPPED_MESSAGE, items }] : [];
}

/** Whether a Node advertises a working virt-v2v (the agent's label) and is Ready. */
export function nodeHasVirtV2v(node: KubeObject): boolean {
  const ready = ((o(node.status).conditions as Obj[] | undefined) ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
  return ready && !!node.metadata?.labels?.[forklift.NODE_VIRT_V2V];
}

/** What the step shows while the agent works: its stage, progress, and the outcome. */
export type ConversionStatus = forklift.ConversionStatus;

/**
 * Asks the agent to convert the VM's volumes (claims `claims`, this namespace; the first holds
 * the request) and waits for its answer; `progress` gets each status. Resolves on Succeeded,
 * throws virt-v2v's reason on Failed. The same `id` is answered once, so a restarted controller
 * waits for the conversion already running instead of starting another.
 */
export async function convert(
  client: Client,
  ns: string,
  claims: string[],
  request: forklift.ConversionRequest,
  progress: (s: ConversionStatus) => void,
  stopped: () => boolean,
  pollMs = 1000,
): Promise<ConversionStatus> {
  const claim = claims[0];
  const read = async (): Promise<{ req?: string; status?: ConversionStatus }> => {
    const pvc = await client.get(PVCS, claim, { namespace: ns });
    const a = pvc.metadata?.annotations ?? {};
    let status: ConversionStatus | undefined;
    try {
      status = a[CONVERSION_STATUS] ? (JSON.parse(a[CONVERSION_STATUS]) as ConversionStatus) : undefined;
    } catch {
      status = undefined;
    }
    return { req: a[CONVERT_REQUEST], status };
  };
  const first = await read();
  if (o(first.req ? JSON.parse(first.req) : {}).id !== request.id)
    await client.patch(PVCS, claim, { metadata: { annotations: { [CONVERT_REQUEST]: JSON.stringify(request) } } }, { namespace: ns });
  for (;;) {
    if (stopped()) throw new Error('stopped');
    const { status } = await read();
    if (status?.id === request.id) {
      progress(status);
      if (status.phase === 'Succeeded') return status;
      if (status.phase === 'Failed') throw new Error(status.message ?? 'conversion failed');
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}
