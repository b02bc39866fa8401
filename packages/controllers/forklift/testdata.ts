/** Builders of OVF descriptors and tar archives for the OVA tests (hostile ones included). */
import { createHash } from 'node:crypto';
import { refs, type KubeObject } from '@vessel/api';
import type { ResourceRef } from '@vessel/client';

export interface TestVm {
  name: string;
  cpus?: number;
  memoryMB?: number;
  firmware?: string;
  networks?: string[];
  macs?: string[];
  /** Disk files with their declared capacity in bytes. */
  disks?: { file: string; capacity: number }[];
}

/** An OVF 1.0 descriptor as ovftool writes it (trimmed), one VirtualSystem per VM. */
export function ovf(vms: TestVm[]): string {
  const disks = vms.flatMap((v) => v.disks ?? []);
  const nets = [...new Set(vms.flatMap((v) => v.networks ?? []))];
  const system = (v: TestVm, k: number): string => `
  <VirtualSystem ovf:id="${v.name}">
    <Name>${v.name}</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian10_64Guest"><Description>Debian GNU/Linux 10 (64-bit)</Description></OperatingSystemSection>
    <VirtualHardwareSection>
      <Item><rasd:ElementName>${v.cpus ?? 1} virtual CPU(s)</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>${v.cpus ?? 1}</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>${v.memoryMB ?? 256}</rasd:VirtualQuantity></Item>
${(v.networks ?? []).map((n, i) => `      <Item><rasd:Address>${v.macs?.[i] ?? `00:50:56:00:0${k}:0${i}`}</rasd:Address><rasd:Connection>${n}</rasd:Connection><rasd:ElementName>Network adapter ${i + 1}</rasd:ElementName><rasd:InstanceID>${10 + i}</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>`).join('\n')}
${(v.disks ?? []).map((d, i) => `      <Item><rasd:ElementName>Hard disk ${i + 1}</rasd:ElementName><rasd:HostResource>ovf:/disk/disk-${d.file}</rasd:HostResource><rasd:InstanceID>${20 + i}</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>`).join('\n')}
      ${v.firmware ? `<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="${v.firmware}"/>` : ''}
    </VirtualHardwareSection>
  </VirtualSystem>`;
  return `<?xml version="1.0" encoding="UTF-8"?>
<!-- written by the tests -->
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
${disks.map((d) => `    <File ovf:href="${d.file}" ovf:id="file-${d.file}"/>`).join('\n')}
  </References>
  <DiskSection><Info>Virtual disk information</Info>
${disks.map((d) => `    <Disk ovf:capacity="${d.capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="disk-${d.file}" ovf:fileRef="file-${d.file}" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>`).join('\n')}
  </DiskSection>
  <NetworkSection><Info>The list of logical networks</Info>
${nets.map((n) => `    <Network ovf:name="${n}"><Description>${n}</Description></Network>`).join('\n')}
  </NetworkSection>
${vms.length > 1 ? `<VirtualSystemCollection ovf:id="collection">${vms.map(system).join('')}</VirtualSystemCollection>` : system(vms[0], 0)}
</Envelope>
`;
}

/** `SHA256(name)= hex` lines for these members. */
export function manifest(files: Record<string, Buffer | string>, algorithm = 'sha256'): string {
  return Object.entries(files)
    .map(([n, b]) => `${algorithm.toUpperCase()}(${n})= ${createHash(algorithm).update(b).digest('hex')}\n`)
    .join('');
}

export interface TarMember {
  name: string;
  data?: Buffer | string;
  /** Tar type flag: '0' file (default), '1' hard link, '2' symlink, '5' directory. */
  type?: string;
  linkname?: string;
  /** Size written in the header when it should lie about the data. */
  declaredSize?: number;
}

/** A ustar archive of `members`, written byte by byte so hostile headers can be made. */
export function tar(members: TarMember[]): Buffer {
  const blocks: Buffer[] = [];
  for (const m of members) {
    const data = typeof m.data === 'string' ? Buffer.from(m.data) : (m.data ?? Buffer.alloc(0));
    const h = Buffer.alloc(512);
    h.write(m.name, 0, 100, 'utf8');
    h.write('0000644\0', 100);
    h.write('0000000\0', 108);
    h.write('0000000\0', 116);
    h.write((m.declaredSize ?? data.length).toString(8).padStart(11, '0') + '\0', 124);
    h.write('00000000000\0', 136);
    h.write(m.type ?? '0', 156);
    if (m.linkname) h.write(m.linkname, 157, 100);
    h.write('ustar\0', 257);
    h.write('00', 263);
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
    blocks.push(h, data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

/** A forklift.konveyor.io/v1beta1 object of `kind` in `namespace` (tests' manifests). */
export function forkliftObject(
  kind: string,
  name: string,
  namespace: string,
  spec: unknown,
): { apiVersion: string; kind: string; metadata: { name: string; namespace: string }; spec: unknown } {
  return { apiVersion: 'forklift.konveyor.io/v1beta1', kind, metadata: { name, namespace }, spec };
}

/**
 * The resources the Forklift tests read and write, as client references (@vessel/api's refs, under
 * the short names the e2e files use).
 */
export const FORKLIFT_REFS = {
  PROVIDERS: refs.FORKLIFT_PROVIDERS,
  NETMAPS: refs.FORKLIFT_NETWORKMAPS,
  STORAGEMAPS: refs.FORKLIFT_STORAGEMAPS,
  PLANS: refs.FORKLIFT_PLANS,
  MIGRATIONS: refs.FORKLIFT_MIGRATIONS,
  HOOKS: refs.FORKLIFT_HOOKS,
  NAMESPACES: refs.NAMESPACES,
  SECRETS: refs.SECRETS,
  CONFIGMAPS: refs.CONFIGMAPS,
  EVENTS: refs.EVENTS,
  VMS: refs.VMS,
  VMIS: refs.VMIS,
  PVCS: refs.PVCS,
  DVS: refs.DATAVOLUMES,
  VMEXPORTS: refs.VMEXPORTS,
  NADS: refs.NETWORK_ATTACHMENT_DEFINITIONS,
  NODES: refs.NODES,
} as const satisfies Record<string, ResourceRef>;

/** forkliftObject in one namespace: `const fk = forkliftIn(NS); fk('Plan', 'p', spec)`. */
export function forkliftIn(namespace: string): (kind: string, name: string, spec: unknown) => KubeObject {
  return (kind, name, spec) => forkliftObject(kind, name, namespace, spec) as KubeObject;
}

/** A plan's provider references: `source` in `namespace`, the destination the host cluster ("host"). */
export function providerRefs(
  source: string,
  namespace: string,
): { source: { name: string; namespace: string }; destination: { name: string; namespace: string } } {
  return { source: { name: source, namespace }, destination: { name: 'host', namespace } };
}

/** A Plan's references to its providers. */
export interface PlanProviders {
  source: { name: string; namespace?: string };
  destination: { name: string; namespace?: string };
}

/**
 * A Plan's spec (what every Plan a test builds repeats): `provider`, `targetNamespace`, the
 * NetworkMap and StorageMap by name (default `net` and `disks`, in `maps.namespace` when given,
 * else the plan's own), the `vms`, then `extra` fields (warm, skipGuestConversion, ...).
 */
export function planSpec(
  o: { provider: PlanProviders; targetNamespace: string; vms: unknown[]; maps?: { network?: string; storage?: string; namespace?: string } },
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  const ref = (name: string) => (o.maps?.namespace ? { name, namespace: o.maps.namespace } : { name });
  return {
    provider: o.provider,
    targetNamespace: o.targetNamespace,
    map: { network: ref(o.maps?.network ?? 'net'), storage: ref(o.maps?.storage ?? 'disks') },
    vms: o.vms,
    ...extra,
  };
}

/**
 * A namespace, a Plan `p` (source provider `source`, maps `n` and `s`, `extra` spec fields) and a
 * Migration `m` of it, created through `client`: what a MigrationRun test starts from.
 */
export async function planAndMigration(
  client: { create(ref: ResourceRef, obj: KubeObject, opts?: { namespace?: string }): Promise<KubeObject> },
  ns: string,
  source: string,
  extra: Record<string, unknown> = {},
): Promise<{ plan: KubeObject; migration: KubeObject }> {
  const { NAMESPACES, FORKLIFT_MIGRATIONS, FORKLIFT_PLANS } = refs;
  await client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
  const spec = planSpec(
    { provider: { source: { name: source }, destination: { name: 'host' } }, targetNamespace: ns, vms: [], maps: { network: 'n', storage: 's' } },
    extra,
  );
  const plan = await client.create(FORKLIFT_PLANS, forkliftObject('Plan', 'p', ns, spec) as KubeObject, { namespace: ns });
  const migration = await client.create(FORKLIFT_MIGRATIONS, forkliftObject('Migration', 'm', ns, { plan: { name: 'p', namespace: ns } }) as KubeObject, {
    namespace: ns,
  });
  return { plan, migration };
}
