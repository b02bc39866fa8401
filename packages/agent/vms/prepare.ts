/**
 * Everything a VMI needs on disk before QEMU starts, made in its run directory: each volume
 * resolved to a file (claims to their pool volume; `ephemeral` and `containerDisk` as fresh
 * qcow2 overlays, so writes vanish when the VM stops; `emptyDisk` as a new blank disk;
 * cloud-init as a seed ISO), the UEFI variable store, and the network backends.
 * Problems come back as `PrepareError`s that say which volume and why.
 */
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { V1VirtualMachineInstanceSpec, V1Volume } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { parseQuantity, storage, refs } from '@vessel/api';
import type { Client, KubeObject } from '@vessel/client';
import { buildCloudInitIso, cloudInitIsoOptions } from '../qemu/cloudinit.ts';
import { efiRequirements, type QemuInput, type QemuNetwork, type QemuVolume } from '../qemu/argv.ts';
import { Causes } from '../qemu/argv/context.ts';
import { cpuTopology } from '../qemu/argv/machine.ts';
import { NetworkError } from '../network/errors.ts';
import type { ClusterNetwork, VmiRef } from '../network/cluster.ts';
import type { SecondaryNetworks } from '../network/secondary.ts';
import { importDisk } from '../storage/import.ts';
import { PathError } from '../storage/pools.ts';
import * as qemuImg from '../storage/qemu-img.ts';
import type { EgressPolicy } from '../storage/egress.ts';
import { openRegistryDisk, registryInsecure } from '../storage/registry.ts';

export type PrepareReason =
  | 'PvcNotFound'
  | 'PvcNotReady'
  | 'VolumeNotOnNode'
  | 'SecretNotFound'
  | 'ImagePullFailed'
  | 'VolumeError'
  | 'AddressPending'
  | 'NetworkError'
  | 'NetworkNotFound'
  | 'NetworkInvalid';

export class PrepareError extends Error {
  /** `retry`: the cause may go away by itself (a claim still filling); else the VMI fails. */
  constructor(
    readonly reason: PrepareReason,
    message: string,
    readonly retry: boolean,
  ) {
    super(message);
    this.name = 'PrepareError';
  }
}

export interface Prepared {
  volumes: Record<string, QemuVolume>;
  networks: Record<string, QemuNetwork>;
  firmware?: QemuInput['firmware'];
  /**
   * The network namespace QEMU runs in (`ip netns` name; undefined: the agent's own): the VM's
   * pod with the masquerade binding, else the node's. Every tap QEMU opens must be made there.
   */
  netns?: string;
}

export interface PrepareContext {
  client: Client;
  /** Claims by "namespace/name", from the agent's cache. */
  claim(namespace: string, name: string): KubeObject | undefined;
  /**
   * A claim's recorded volume path as a file in one of this node's pools (its local pool or a
   * shared one), inside the directory of `namespace`; throws a PathError otherwise.
   */
  locate(namespace: string, path: string): string;
  /** Where containerDisk images may be pulled from (storage/egress.ts). */
  egress?: EgressPolicy;
  signal?: AbortSignal;
  /**
   * The node's cluster network (network/cluster.ts), when the agent has one: the interface on
   * the pod network with the bridge binding gets a tap there. Without it every interface is
   * QEMU user networking.
   */
  network?: Pick<ClusterNetwork, 'attach' | 'netns'>;
  /**
   * NetworkAttachmentDefinitions (network/secondary.ts), when the agent has a cluster network:
   * an interface on a multus network with the bridge binding gets a port on the NAD's bridge.
   */
  secondary?: Pick<SecondaryNetworks, 'attach'>;
  /**
   * A live migration's target (block-migration.ts): claim volumes (by volume name) on these
   * files, the blank copies the agent made at paths it derived, instead of the claims' recorded files.
   */
  volumePaths?: Record<string, string>;
  /**
   * A live migration's target: containerDisk images (by volume name) pinned to the digest the
   * source runs (block-migration.ts pinnedImage), pulled instead of the spec's reference.
   */
  containerDiskImages?: Record<string, string>;
}

type Vmi = { metadata: { name: string; namespace: string; uid?: string; ownerReferences?: unknown }; spec: V1VirtualMachineInstanceSpec };

export async function prepareVm(vmi: Vmi, runDir: string, ctx: PrepareContext): Promise<Prepared> {
  await mkdir(runDir, { recursive: true, mode: 0o750 });
  const volumes: Record<string, QemuVolume> = {};
  for (const vol of vmi.spec.volumes ?? []) {
    volumes[vol.name] = await prepareVolume(vmi, vol, runDir, ctx);
  }
  const { networks, netns } = await prepareNetworks(vmi, ctx);
  let firmware: QemuInput['firmware'];
  const efi = efiRequirements(vmi.spec);
  if (efi.efi) {
    const code = efi.secureBoot ? '/usr/share/OVMF/OVMF_CODE_4M.secboot.fd' : '/usr/share/OVMF/OVMF_CODE_4M.fd';
    const varsTemplate = efi.secureBoot ? '/usr/share/OVMF/OVMF_VARS_4M.ms.fd' : '/usr/share/OVMF/OVMF_VARS_4M.fd';
    const vars = join(runDir, 'OVMF_VARS.fd');
    // The variable store is the VM's NVRAM: made once, kept across boots.
    if (!(await exists(vars)))
      await copyFile(varsTemplate, vars).catch((e: Error) => {
        throw new PrepareError('VolumeError', `UEFI firmware is missing (${e.message}): apt-get install ovmf`, false);
      });
    firmware = { ovmfCode: code, ovmfVars: vars };
  }
  return { volumes, networks, firmware, netns };
}

/**
 * The backend of each interface: a tap on the cluster network for the pod network's interface
 * with the bridge binding (when the agent has a cluster network), a tap in the VM's pod for one
 * with masquerade (network/pod.ts), a port on the NAD's bridge for a multus network's (when it
 * has secondary networks), QEMU user networking for the rest. Also the namespace QEMU must run
 * in: the pod's when there is one, else the node's. The pod interface goes first, since the
 * secondary NICs' taps must be made where QEMU runs.
 */
async function prepareNetworks(vmi: Vmi, ctx: PrepareContext): Promise<{ networks: Record<string, QemuNetwork>; netns?: string }> {
  const networks: Record<string, QemuNetwork> = {};
  let netns = ctx.network?.netns;
  const pod = new Set((vmi.spec.networks ?? []).filter((n) => n.pod).map((n) => n.name));
  const multus = new Map((vmi.spec.networks ?? []).filter((n) => n.multus?.networkName).map((n) => [n.name, n.multus!.networkName]));
  const interfaces = vmi.spec.domain.devices.interfaces ?? [];
  const podFirst = [...interfaces.filter((i) => pod.has(i.name)), ...interfaces.filter((i) => !pod.has(i.name))];
  for (const iface of podFirst) {
    const binding = bindingOf(iface);
    const nadName = multus.get(iface.name);
    try {
      if (ctx.secondary && nadName !== undefined && binding === 'bridge') {
        const nic = await ctx.secondary.attach(vmi.metadata, iface.name, nadName, { multiQueue: multiQueue(vmi, iface.model), qemuNetns: netns });
        networks[iface.name] = { kind: 'tap', ifname: nic.tap, mac: iface.macAddress };
        continue;
      }
      if (!ctx.network || !pod.has(iface.name) || !binding) {
        networks[iface.name] = { kind: 'user', mac: iface.macAddress };
        continue;
      }
      const nic = await ctx.network.attach(vmi, iface.name, {
        multiQueue: multiQueue(vmi, iface.model),
        hostname: vmi.spec.hostname ?? vmi.metadata.name,
        masquerade: binding === 'masquerade' ? { ports: iface.ports?.map((p) => ({ port: p.port, protocol: p.protocol })) } : undefined,
      });
      networks[iface.name] = { kind: 'tap', ifname: nic.qemuTap, mac: nic.mac };
      netns = nic.netns;
    } catch (e) {
      if (!(e instanceof NetworkError)) throw e;
      // Waiting for IPAM or for a NAD is normal for a moment; a command that failed on the node may pass next time.
      const reason = e.code === 'AddressPending' || e.code === 'NetworkNotFound' || e.code === 'NetworkInvalid' ? e.code : 'NetworkError';
      throw new PrepareError(reason, e.message, e.code !== 'InvalidArgument' && e.code !== 'Unsupported');
    }
  }
  return { networks, netns };
}

const OTHER_BINDINGS = ['sriov', 'slirp', 'macvtap', 'passt', 'passtBinding', 'binding'];

/**
 * The binding when the cluster network serves it, else undefined: `bridge` (named, or no binding
 * at all) is a tap on vsl-br0, `masquerade` a pod (one rule for taps, status and port-forward).
 */
export function bindingOf(iface: object): 'bridge' | 'masquerade' | undefined {
  const i = iface as Record<string, unknown>;
  if (OTHER_BINDINGS.some((k) => i[k] !== undefined)) return undefined;
  return i.masquerade !== undefined ? 'masquerade' : 'bridge';
}

/**
 * The cluster address of the VMI's pod interface when that interface is on the cluster network
 * (bridge or masquerade), from the agent's own view of IPAM (never from the VMI's status, which
 * a tenant may write): what port-forward dials from the node's namespace (for masquerade, the
 * pod's DNAT passes it on to the guest).
 */
export function clusterAddressOf(vmi: VmiRef & { spec?: unknown }, network: Pick<ClusterNetwork, 'addressOf'>): string | undefined {
  const spec = vmi.spec as Partial<V1VirtualMachineInstanceSpec> | undefined;
  const pod = new Set((spec?.networks ?? []).filter((n) => n.pod).map((n) => n.name));
  const iface = (spec?.domain?.devices?.interfaces ?? []).find((i) => pod.has(i.name));
  return iface && bindingOf(iface) ? network.addressOf(vmi, iface.name)?.ip : undefined;
}

/** Whether QEMU opens the tap with several queues (the argv builder's rule), so the tap must be made for it. */
function multiQueue(vmi: Vmi, model: string | undefined): boolean {
  if (vmi.spec.domain.devices.networkInterfaceMultiqueue !== true || (model ?? 'virtio') !== 'virtio') return false;
  const t = cpuTopology(vmi.spec.domain as unknown as Record<string, unknown>, new Causes());
  return t.sockets * t.cores * t.threads > 1;
}

async function prepareVolume(vmi: Vmi, vol: V1Volume, runDir: string, ctx: PrepareContext): Promise<QemuVolume> {
  const ns = vmi.metadata.namespace;
  const overlay = join(runDir, `${vol.name}.overlay.qcow2`);
  if (vol.dataVolume || vol.persistentVolumeClaim) {
    const name = vol.dataVolume?.name ?? vol.persistentVolumeClaim!.claimName;
    const given = ctx.volumePaths && Object.hasOwn(ctx.volumePaths, vol.name) ? ctx.volumePaths[vol.name] : undefined;
    const path = given ?? claimPath(ns, name, vol.name, ctx);
    return { path, format: 'qcow2', readOnly: vol.persistentVolumeClaim?.readOnly === true };
  }
  if (vol.ephemeral) {
    const base = claimPath(ns, vol.ephemeral.persistentVolumeClaim?.claimName ?? '', vol.name, ctx);
    await freshOverlay(overlay, base);
    return { path: overlay, format: 'qcow2' };
  }
  if (vol.emptyDisk) {
    const path = join(runDir, `${vol.name}.empty.qcow2`);
    await rm(path, { force: true });
    await qemuImg.create(path, { format: 'qcow2', size: parseQuantity(vol.emptyDisk.capacity as string) });
    return { path, format: 'qcow2' };
  }
  if (vol.containerDisk) {
    // Pulled once per VMI (kept while it lives, across guest reboots), with a fresh overlay per
    // start; the manifest digest it came from is kept beside it (what a migration pins).
    const base = join(runDir, `${vol.name}.containerdisk.qcow2`);
    const digestFile = containerDiskDigestFile(runDir, vol.name);
    const pinned = ctx.containerDiskImages && Object.hasOwn(ctx.containerDiskImages, vol.name) ? ctx.containerDiskImages[vol.name] : undefined;
    const want = pinned?.slice(pinned.lastIndexOf('@') + 1);
    const have = await readFile(digestFile, 'utf8').then(
      (t) => t.trim(),
      () => undefined,
    );
    // A migration's target reuses a base left here only when it is the digest the source runs; a
    // base without its digest (an older agent's) is pulled again, so the digest can be recorded.
    if (have === undefined || !(await exists(base)) || (want !== undefined && have !== want)) {
      await rm(digestFile, { force: true });
      await rm(base, { force: true });
      const image = pinned ?? vol.containerDisk.image;
      const url = `docker://${image}`;
      try {
        const reg = await openRegistryDisk({ url, insecure: registryInsecure(url, ctx.egress), signal: ctx.signal, egress: ctx.egress });
        await importDisk({
          source: { kind: 'stream', stream: reg.stream, sizeHint: reg.size },
          dest: base,
          maxVirtualSize: Number.MAX_SAFE_INTEGER,
          signal: ctx.signal,
        });
        await writeFile(digestFile, `${reg.digest}\n`);
      } catch (e) {
        throw new PrepareError('ImagePullFailed', `volume ${vol.name}: cannot pull containerDisk ${image}: ${(e as Error).message}`, true);
      }
    }
    await freshOverlay(overlay, base);
    return { path: overlay, format: 'qcow2' };
  }
  if (vol.cloudInitNoCloud || vol.cloudInitConfigDrive) {
    const src = vol.cloudInitNoCloud ?? vol.cloudInitConfigDrive!;
    const secretData: { userData?: string; networkData?: string } = {};
    if (src.secretRef?.name) secretData.userData = await secretValue(ctx, ns, src.secretRef.name, ['userdata', 'userData'], vol.name);
    if (src.networkDataSecretRef?.name)
      secretData.networkData = await secretValue(ctx, ns, src.networkDataSecretRef.name, ['networkdata', 'networkData'], vol.name);
    const dest = join(runDir, `${vol.name}.cloudinit.iso`);
    await buildCloudInitIso(cloudInitIsoOptions({ vmi, volume: vol, secretData, dest }));
    return { path: dest, format: 'raw', readOnly: true };
  }
  // Other volume types are refused by the argv builder with their field path.
  return { path: '/dev/null', format: 'raw' };
}

/** Where the manifest digest of a containerDisk's pulled base is kept in the run directory. */
function containerDiskDigestFile(runDir: string, volume: string): string {
  return join(runDir, `${volume}.containerdisk.digest`);
}

/**
 * The manifest digests of the VMI's containerDisks as pulled into `runDir` (volume → digest),
 * what a migration pins; a volume whose base came without one (an older agent's) is left out.
 */
export async function pulledDigests(spec: V1VirtualMachineInstanceSpec, runDir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const v of spec.volumes ?? []) {
    if (!v.containerDisk) continue;
    const d = await readFile(containerDiskDigestFile(runDir, v.name), 'utf8').catch(() => '');
    if (d.trim()) out[v.name] = d.trim();
  }
  return out;
}

function claimPath(ns: string, claim: string, volume: string, ctx: PrepareContext): string {
  return claimVolumePath(ns, claim, volume, ctx.claim(ns, claim), ctx.locate);
}

/** The file of a claim a VM's volume uses, or a PrepareError saying why it cannot be used (yet). */
export function claimVolumePath(
  ns: string,
  claim: string,
  volume: string,
  pvc: KubeObject | undefined,
  locate: (namespace: string, path: string) => string,
): string {
  if (!pvc) throw new PrepareError('PvcNotFound', `volume ${volume}: PersistentVolumeClaim ${ns}/${claim} does not exist`, true);
  const path = pvc.metadata?.annotations?.[storage.VOLUME_PATH];
  if ((pvc.status as { phase?: string } | undefined)?.phase !== 'Bound' || !path) {
    throw new PrepareError('PvcNotReady', `volume ${volume}: PersistentVolumeClaim ${ns}/${claim} is not Bound yet`, true);
  }
  try {
    return locate(ns, path);
  } catch (e) {
    if (!(e instanceof PathError)) throw e;
    if (e.code === 'PathNotInPool') throw new PrepareError('VolumeNotOnNode', `volume ${volume}: ${ns}/${claim} lives in another node's local pool`, false);
    throw new PrepareError('VolumeError', `volume ${volume}: PersistentVolumeClaim ${claim}: ${e.message}`, false);
  }
}

async function freshOverlay(path: string, base: string): Promise<void> {
  await rm(path, { force: true });
  await qemuImg.create(path, { format: 'qcow2', backingFile: base, backingFormat: 'qcow2' });
}

async function secretValue(ctx: PrepareContext, ns: string, name: string, keys: string[], volume: string): Promise<string> {
  let secret: KubeObject;
  try {
    secret = await ctx.client.get(refs.SECRETS, name, { namespace: ns });
  } catch {
    throw new PrepareError('SecretNotFound', `volume ${volume}: Secret ${ns}/${name} does not exist`, true);
  }
  const data = (secret.data as Record<string, string> | undefined) ?? {};
  const key = keys.find((k) => data[k] !== undefined);
  if (!key) throw new PrepareError('SecretNotFound', `volume ${volume}: Secret ${ns}/${name} has none of the keys ${keys.join(', ')}`, false);
  return Buffer.from(data[key], 'base64').toString('utf8');
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
