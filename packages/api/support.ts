/**
 * What Vessel implements, per kind, as field-path patterns. A field the upstream schema has but no
 * pattern covers is accepted with a warning ("not implemented by Vessel yet; accepted and ignored"),
 * so KubeVirt manifests keep working while users learn what has no effect yet.
 *
 * A pattern covers the named field and everything below it; `[]` marks an array's items (the index
 * is dropped when matching). Kinds without an entry (the core kinds) are implemented as a whole.
 * `apiVersion`, `kind` and `status` are never warned about.
 */

/** Fields of a VirtualMachineInstanceSpec Vessel implements (or certainly will soon). */
export const VMI_SPEC_SUPPORTED: readonly string[] = [
  'architecture',
  'domain.cpu',
  'domain.memory',
  'domain.resources',
  'domain.machine',
  'domain.firmware.bootloader',
  'domain.firmware.uuid',
  'domain.firmware.serial',
  'domain.firmware.kernelBoot',
  'domain.features.acpi',
  'domain.features.apic',
  'domain.features.smm',
  'domain.devices.disks',
  'domain.devices.interfaces[].name',
  'domain.devices.interfaces[].masquerade',
  'domain.devices.interfaces[].bridge',
  'domain.devices.interfaces[].model',
  'domain.devices.interfaces[].macAddress',
  'domain.devices.interfaces[].ports',
  'domain.devices.interfaces[].bootOrder',
  'domain.devices.interfaces[].pciAddress',
  'domain.devices.autoattachPodInterface',
  'domain.devices.autoattachGraphicsDevice',
  'domain.devices.autoattachSerialConsole',
  'domain.devices.autoattachMemBalloon',
  'domain.devices.autoattachInputDevice',
  'domain.devices.rng',
  'domain.devices.inputs',
  'domain.devices.networkInterfaceMultiqueue',
  'domain.devices.blockMultiQueue',
  'volumes[].name',
  'volumes[].containerDisk',
  'volumes[].dataVolume',
  'volumes[].persistentVolumeClaim',
  'volumes[].cloudInitNoCloud',
  'volumes[].cloudInitConfigDrive',
  'volumes[].emptyDisk',
  'volumes[].ephemeral',
  'networks[].name',
  'networks[].pod',
  'networks[].multus',
  'nodeSelector',
  'affinity',
  'tolerations',
  'terminationGracePeriodSeconds',
  'evictionStrategy',
  'hostname',
  'subdomain',
];

/** Fields of a DataVolumeSpec Vessel implements. */
export const DV_SPEC_SUPPORTED: readonly string[] = [
  'source.http',
  'source.registry',
  'source.blank',
  'source.upload',
  'source.pvc',
  'sourceRef',
  'storage',
  'pvc',
  'contentType',
];

const under = (prefix: string, list: readonly string[]): string[] => list.map((p) => `${prefix}.${p}`);

/** Per kind ("group/Kind"), the implemented patterns. */
export const SUPPORTED_FIELDS: Readonly<Record<string, readonly string[]>> = {
  'kubevirt.io/VirtualMachine': [
    'metadata',
    'spec.running',
    'spec.runStrategy',
    'spec.template.metadata',
    ...under('spec.template.spec', VMI_SPEC_SUPPORTED),
    'spec.dataVolumeTemplates[].apiVersion',
    'spec.dataVolumeTemplates[].kind',
    'spec.dataVolumeTemplates[].metadata',
    ...under('spec.dataVolumeTemplates[].spec', DV_SPEC_SUPPORTED),
  ],
  'kubevirt.io/VirtualMachineInstance': ['metadata', ...under('spec', VMI_SPEC_SUPPORTED)],
  'kubevirt.io/VirtualMachineInstanceMigration': ['metadata', 'spec.vmiName'],
  'cdi.kubevirt.io/DataVolume': ['metadata', ...under('spec', DV_SPEC_SUPPORTED)],
  'cdi.kubevirt.io/DataSource': ['metadata', 'spec.source.pvc'],
};

/** A prefix tree of supported paths; `all` marks a covered subtree. */
export interface SupportTrie {
  all: boolean;
  children: Map<string, SupportTrie>;
}

export function buildSupportTrie(patterns: readonly string[]): SupportTrie {
  const root: SupportTrie = { all: false, children: new Map() };
  for (const p of patterns) {
    let node = root;
    for (const raw of p.split('.')) {
      const seg = raw.endsWith('[]') ? raw.slice(0, -2) : raw;
      let next = node.children.get(seg);
      if (!next) {
        next = { all: false, children: new Map() };
        node.children.set(seg, next);
      }
      node = next;
    }
    node.all = true;
  }
  return root;
}

const tries = new Map<string, SupportTrie | null>();

/** The support trie of a kind, or null when the whole kind is implemented. */
export function supportTrieFor(group: string, kind: string): SupportTrie | null {
  const key = `${group}/${kind}`;
  let t = tries.get(key);
  if (t === undefined) {
    const patterns = SUPPORTED_FIELDS[key];
    t = patterns ? buildSupportTrie(patterns) : null;
    tries.set(key, t);
  }
  return t;
}

export function notImplementedWarning(path: string): string {
  return `${path}: not implemented by Vessel yet; accepted and ignored`;
}
