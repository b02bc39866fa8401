/**
 * What Vessel implements, per kind, as field-path patterns. A field the upstream schema has but no
 * pattern covers is accepted with a warning ("not implemented by Vessel yet; accepted and ignored"),
 * so KubeVirt manifests keep working while users learn what has no effect yet. VMI specs are the
 * exception: VMI_SPEC_FIELDS below decides, and what it does not allow is refused.
 *
 * A pattern covers the named field and everything below it; `[]` marks an array's items (the index
 * is dropped when matching). Kinds without an entry (the core kinds) are implemented as a whole.
 * `apiVersion`, `kind` and `status` are never warned about.
 */
import { Reason, notSupported } from './errors.ts';
import type { FieldCause } from './types.ts';
import { isObject as isObj } from './objects.ts';

// ---------------------------------------------------------------------------------------------
// The VirtualMachineInstanceSpec fields Vessel implements: the one list both admission and the
// agent's QEMU argv builder (packages/agent/qemu/argv.ts) use. A field set in a VMI spec (or a VM
// template) that the tree does not allow is refused at admission (422 naming the field) and, for
// objects stored before, by the argv builder at start: the builder cannot honour it, so accepting
// it would only make a VM that never starts.
//
// 'leaf': any value; the argv builder reads and checks it. 'false-only': accepted only when false
// (the feature stays off). A list of values: only those (where KubeVirt allows more, or any
// string). An object lists its allowed keys (none: only `{}`); '[]' describes the items of a list.

export type SupportedValue = string | number | boolean;
export type FieldSupport = 'leaf' | 'false-only' | readonly SupportedValue[] | { readonly [key: string]: FieldSupport };
const L = 'leaf';
const F = 'false-only';

const PVC_REF: FieldSupport = { claimName: L, readOnly: L };
const CLOUD_INIT: FieldSupport = {
  // Rendered into the seed ISO by the agent (cloudinit.ts); the disk is just that ISO.
  userData: L,
  userDataBase64: L,
  secretRef: { name: L },
  networkData: L,
  networkDataBase64: L,
  networkDataSecretRef: { name: L },
};

/** The VirtualMachineInstanceSpec fields Vessel implements (see above). */
export const VMI_SPEC_FIELDS: FieldSupport = {
  architecture: L,
  hostname: L, // the DHCP hostname on user networks; cloud-init and DNS use it elsewhere
  subdomain: L, // DNS records: the controllers' business, not QEMU's
  nodeSelector: L, // scheduler
  affinity: L, // scheduler
  tolerations: L, // scheduler
  terminationGracePeriodSeconds: L, // the agent's stop sequence
  evictionStrategy: L, // controllers
  priorityClassName: L, // admission resolves it, the scheduler preempts by it
  domain: {
    cpu: {
      cores: L,
      sockets: L,
      threads: L,
      model: L,
      features: { '[]': { name: L, policy: L } },
      // The agent's CPU manager pins them (docs/pinning.md); guest NUMA only as passthrough.
      dedicatedCpuPlacement: L,
      isolateEmulatorThread: L,
      numa: { guestMappingPassthrough: {} },
    },
    memory: { guest: L, hugepages: { pageSize: ['2Mi', '1Gi'] } },
    resources: { requests: { cpu: L, memory: L }, limits: { cpu: L, memory: L } },
    machine: { type: L },
    firmware: {
      uuid: L,
      serial: L,
      // efi.persistent: the agent keeps (or recreates) this VM's ovmfVars copy across restarts.
      bootloader: { bios: { useSerial: L }, efi: { secureBoot: L, persistent: L } },
      kernelBoot: {
        kernelArgs: L,
        container: { image: L, imagePullPolicy: L, imagePullSecret: L, kernelPath: L, initrdPath: L },
      },
    },
    features: { acpi: { enabled: L }, apic: { enabled: [true], endOfInterrupt: F }, smm: { enabled: L } }, // x86 guests always have an APIC
    clock: {
      utc: { offsetSeconds: [0] },
      timezone: L,
      // QEMU cannot remove the RTC or the PIT.
      timer: { hpet: { present: L }, rtc: { present: [true], tickPolicy: ['delay', 'catchup'] }, pit: { present: [true], tickPolicy: ['delay', 'discard'] } },
    },
    chassis: { manufacturer: L, version: L, serial: L, asset: L, sku: L },
    devices: {
      disks: {
        '[]': {
          name: L,
          bootOrder: L,
          cache: ['none', 'writethrough', 'writeback'],
          io: ['native', 'threads', 'default'],
          serial: L,
          errorPolicy: ['stop', 'report', 'ignore', 'enospace'],
          shareable: L,
          dedicatedIOThread: F,
          changedBlockTracking: F,
          disk: { bus: L, readonly: L },
          cdrom: { bus: L, readonly: L, tray: L },
          blockSize: { custom: { logical: L, physical: L, discardGranularity: L } },
        },
      },
      interfaces: {
        '[]': {
          name: L,
          model: ['virtio', 'e1000', 'e1000e', 'igb', 'ne2k_pci', 'pcnet', 'rtl8139'],
          macAddress: L,
          bootOrder: L,
          ports: { '[]': { name: L, port: L, protocol: ['TCP', 'UDP'] } }, // the agent derives host forwards from them
          masquerade: {},
          bridge: {},
        },
      },
      inputs: { '[]': { name: L, type: L, bus: L } },
      rng: {},
      watchdog: { name: L, i6300esb: { action: L } },
      video: { type: ['vga', 'virtio', 'bochs', 'cirrus'] },
      autoattachPodInterface: L, // applied by API defaulting
      autoattachGraphicsDevice: L,
      autoattachSerialConsole: L,
      autoattachMemBalloon: L,
      autoattachInputDevice: L,
      autoattachVSOCK: F,
      logSerialConsole: L,
      blockMultiQueue: L,
      networkInterfaceMultiqueue: L,
      useVirtioTransitional: L,
      disableHotplug: L, // true: no virtio-scsi controller for hotplugged disks (unless a scsi disk needs one)
    },
  },
  networks: { '[]': { name: L, pod: { vmNetworkCIDR: L }, multus: { networkName: L, default: L } } },
  volumes: {
    '[]': {
      name: L,
      containerDisk: { image: L, imagePullPolicy: L, imagePullSecret: L, path: L },
      // Hotpluggable volumes present at start are plugged like any other; the agent's hotplug
      // attaches and detaches the ones added or removed while the VM runs.
      dataVolume: { name: L, hotpluggable: L },
      persistentVolumeClaim: { claimName: L, readOnly: L, hotpluggable: L },
      ephemeral: { persistentVolumeClaim: PVC_REF },
      emptyDisk: { capacity: L },
      cloudInitNoCloud: CLOUD_INIT,
      cloudInitConfigDrive: CLOUD_INIT,
    },
  },
};

/**
 * Values the argv builder supports where KubeVirt allows more, shared with admission for the same
 * reason as the fields: refused when the object is written, not at every start.
 */
export const SUPPORTED_ARCHITECTURES: readonly string[] = ['amd64'];
/** Disk buses per target (`lun` is not implemented; a cdrom cannot be virtio in QEMU). */
export const SUPPORTED_DISK_BUSES: Readonly<Record<'disk' | 'cdrom', readonly string[]>> = { disk: ['virtio', 'sata', 'scsi'], cdrom: ['sata', 'scsi'] };
/** Machine types, as a Status lists them. */
export const SUPPORTED_MACHINE_TYPES: readonly string[] = ['q35', 'pc', 'pc-q35-<version>', 'pc-i440fx-<version>'];

/** The least guest memory QEMU is started with (smaller guests cannot boot). */
export const MIN_GUEST_MEMORY = 16 * 2 ** 20;

/**
 * Why a firmware UUID or an interface MAC cannot be given to QEMU, or undefined when it can.
 * Shared by admission and the argv builder, so a spec admitted is a spec QEMU takes.
 */
export function firmwareUuidProblem(uuid: string): string | undefined {
  return /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/.test(uuid) ? undefined : 'must be a UUID (8-4-4-4-12 hex digits)';
}
export function macAddressProblem(mac: string): string | undefined {
  if (!/^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$/.test(mac)) return 'must be a MAC address such as 02:00:00:00:00:01';
  if ((parseInt(mac.slice(0, 2), 16) & 1) === 1) return 'must be a unicast address (lowest bit of the first octet clear)';
  return undefined;
}

/** A disk's custom logical or physical block size QEMU takes. */
export function blockSizeProblem(n: number): string | undefined {
  return n < 512 || n > 32768 || (n & (n - 1)) !== 0 ? 'must be a power of two from 512 to 32768' : undefined;
}

/** The pod network's vmNetworkCIDR a user-mode (slirp) network can use: IPv4, /8 to /29. */
export function parseVmNetworkCidr(cidr: string): { octets: number[]; prefix: number } | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr);
  if (!m) return undefined;
  const octets = m.slice(1, 5).map(Number);
  const prefix = Number(m[5]);
  return octets.some((o) => o > 255) || prefix < 8 || prefix > 29 ? undefined : { octets, prefix };
}
export const VM_NETWORK_CIDR_PROBLEM = 'must be an IPv4 CIDR with a prefix length from 8 to 29';

/**
 * The QEMU machine type for spec.domain.machine.type, or undefined when Vessel has none for it.
 * RHEL-only types (OpenShift manifests) map to upstream's latest of the same family, with a note.
 */
export function qemuMachineType(type: string): { machine: string; note?: string } | undefined {
  if (type === 'q35' || type === 'pc' || /^pc-(q35|i440fx)-[0-9]+\.[0-9]+$/.test(type)) return { machine: type };
  if (/^pc-q35-rhel[0-9.]+$/.test(type)) return { machine: 'q35', note: `${type} is a RHEL machine type; using q35` };
  if (/^pc-i440fx-rhel[0-9.]+$/.test(type)) return { machine: 'pc', note: `${type} is a RHEL machine type; using pc` };
  return undefined;
}

/**
 * VMI_SPEC_FIELDS as patterns ("domain.devices.disks[].cache"), with "(false only)" and
 * "({} only)" marks: for documentation and tests.
 */
export function vmiSpecFieldPatterns(): string[] {
  const out: string[] = [];
  const visit = (a: FieldSupport, prefix: string): void => {
    if (Array.isArray(a)) {
      out.push(prefix);
      return;
    }
    if (typeof a === 'string') {
      out.push(a === F ? `${prefix} (false only)` : prefix);
      return;
    }
    const o = a as { readonly [key: string]: FieldSupport };
    const keys = Object.keys(o);
    if (keys.length === 0) out.push(`${prefix} ({} only)`);
    for (const k of keys) visit(o[k], k === '[]' ? `${prefix}[]` : prefix ? `${prefix}.${k}` : k);
  };
  visit(VMI_SPEC_FIELDS, '');
  return out;
}

/** The values VMI_SPEC_FIELDS allows at a pattern ("domain.devices.disks[].cache"). */
export function supportedValues(pattern: string): readonly SupportedValue[] {
  let at: FieldSupport | undefined = VMI_SPEC_FIELDS;
  for (const raw of pattern.split('.')) {
    const seg = raw.endsWith('[]') ? raw.slice(0, -2) : raw;
    at = typeof at === 'object' && !Array.isArray(at) ? (at as { readonly [key: string]: FieldSupport })[seg] : undefined;
    if (raw.endsWith('[]')) at = typeof at === 'object' && !Array.isArray(at) ? (at as { readonly [key: string]: FieldSupport })['[]'] : undefined;
  }
  if (!Array.isArray(at)) throw new Error(`no value list at ${pattern}`);
  return at as readonly SupportedValue[];
}

/** Unset: null, absent, or an empty list (it asks for nothing). */
const isUnset = (v: unknown): boolean => v === undefined || v === null || (Array.isArray(v) && v.length === 0);

function show(v: unknown): string {
  const s = typeof v === 'string' ? JSON.stringify(v) : (JSON.stringify(v) ?? String(v));
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

function sameJson(a: unknown, b: unknown): boolean {
  return a === b || (a !== undefined && b !== undefined && JSON.stringify(a) === JSON.stringify(b));
}

/** Kubernetes field path of a map key: .key when it is an identifier, else [key]. */
const keyPath = (path: string, key: string): string => (/^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `${path}.${key}` : `${path}[${key}]`);

/**
 * The fields of a VMI spec (found at `path`: "spec", "spec.template.spec") that Vessel does not
 * implement, as causes naming each field; with `values`, also values outside a field's list (the
 * argv builder checks those itself, with its own messages). With `old` (the stored spec, on
 * updates) a field whose value did not change is not refused again, so objects stored before a
 * field was refused can still be updated (Kubernetes calls this ratcheting).
 */
export function unsupportedVmiSpecFields(spec: unknown, path: string, opts: { old?: unknown; values?: boolean } = {}): FieldCause[] {
  const causes: FieldCause[] = [];
  const walk = (value: unknown, allow: FieldSupport, p: string, prev: unknown): void => {
    if (isUnset(value) || allow === L || sameJson(value, prev)) return;
    if (Array.isArray(allow)) {
      if (opts.values && !allow.includes(value as SupportedValue)) causes.push(notSupported(p, value, allow.map(String)));
      return;
    }
    if (allow === F) {
      if (value !== false)
        causes.push({ reason: Reason.NotSupported, field: p, message: `Unsupported value: ${show(value)}: only false is supported by Vessel yet` });
      return;
    }
    const fields = allow as { readonly [key: string]: FieldSupport };
    const items = fields['[]'];
    if (items !== undefined) {
      if (!Array.isArray(value)) {
        causes.push({ reason: Reason.Invalid, field: p, message: `Invalid value: ${show(value)}: must be a list` });
        return;
      }
      const prevList = Array.isArray(prev) ? prev : [];
      value.forEach((v, i) => walk(v, items, `${p}[${i}]`, prevList[i]));
      return;
    }
    if (!isObj(value)) {
      causes.push({ reason: Reason.Invalid, field: p, message: `Invalid value: ${show(value)}: must be an object` });
      return;
    }
    const prevObj = isObj(prev) ? prev : {};
    for (const [k, v] of Object.entries(value)) {
      const sub = fields[k];
      if (sub !== undefined) walk(v, sub, keyPath(p, k), prevObj[k]);
      else if (!isUnset(v) && !sameJson(v, prevObj[k])) {
        causes.push({ reason: Reason.NotSupported, field: keyPath(p, k), message: 'Unsupported field: not supported by Vessel yet' });
      }
    }
  };
  walk(spec, VMI_SPEC_FIELDS, path, opts.old);
  return causes;
}

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
    'spec.instancetype',
    'spec.preference',
    'spec.template.metadata',
    // The VMI spec is checked against VMI_SPEC_FIELDS (refused, not warned): kinds/kubevirt.ts.
    'spec.template.spec',
    'spec.dataVolumeTemplates[].apiVersion',
    'spec.dataVolumeTemplates[].kind',
    'spec.dataVolumeTemplates[].metadata',
    ...under('spec.dataVolumeTemplates[].spec', DV_SPEC_SUPPORTED),
  ],
  'kubevirt.io/VirtualMachineInstance': ['metadata', 'spec'],
  'kubevirt.io/VirtualMachineInstanceMigration': ['metadata', 'spec.vmiName'],
  'kubevirt.io/KubeVirt': [
    'metadata',
    'spec.configuration.evictionStrategy',
    ...under('spec.configuration.migrations', [
      'bandwidthPerMigration',
      'completionTimeoutPerGiB',
      'progressTimeout',
      'parallelMigrationsPerCluster',
      'parallelOutboundMigrationsPerNode',
      'allowAutoConverge',
      'allowPostCopy',
      'disableTLS',
      'allowWorkloadDisruption',
      'nodeDrainTaintKey',
      // Refused by validation (migration-config.ts), so not warned as well.
      'network',
      // Accepted and ignored, on purpose (docs/migration.md "Settings"): no SELinux labels, no libvirt override.
      'unsafeMigrationOverride',
      'matchSELinuxLevelOnMigration',
    ]),
  ],
  'migrations.kubevirt.io/MigrationPolicy': [
    'metadata',
    'spec.selectors',
    'spec.allowAutoConverge',
    'spec.allowPostCopy',
    'spec.bandwidthPerMigration',
    'spec.completionTimeoutPerGiB',
    'spec.allowWorkloadDisruption',
  ],
  // The template is checked as a VirtualMachine (kinds/replicas.ts); maxUnavailable, nameGeneration and scaleInStrategy are not built.
  'pool.kubevirt.io/VirtualMachinePool': ['metadata', 'spec.replicas', 'spec.selector', 'spec.paused', 'spec.virtualMachineTemplate'],
  'cdi.kubevirt.io/DataVolume': ['metadata', ...under('spec', DV_SPEC_SUPPORTED)],
  'cdi.kubevirt.io/DataSource': ['metadata', 'spec.source.pvc'],
  'cdi.kubevirt.io/DataImportCron': [
    'metadata',
    'spec.schedule',
    'spec.managedDataSource',
    'spec.importsToKeep',
    'spec.garbageCollect',
    'spec.template.metadata',
    ...under('spec.template.spec', DV_SPEC_SUPPORTED),
  ],
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
