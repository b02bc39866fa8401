/**
 * The cluster instancetypes and preferences a fresh server installs (docs/instancetypes.md), with
 * the names, sizes and labels of KubeVirt's common-instancetypes (github.com/kubevirt/common-instancetypes)
 * written here as data: the u1, o1, cx1 and m1 series and preferences for common guest OSes.
 * n1 (DPDK) and rt1 (realtime) are left out: they need node features Vessel does not have.
 */
import { API_VERSION, CLUSTER_INSTANCETYPE, CLUSTER_PREFERENCE } from './instancetype.ts';
import type { KubeObject } from './types.ts';

const VENDOR = 'kubevirt.io';
const VERSION = 'v1.3.1'; // the common-instancetypes release these sizes follow

/** [size, vCPUs, memory] per series, as the upstream README lists them. */
const SERIES: Record<string, { className: string; description: string; sizes: [string, number, string][] }> = {
  u1: {
    className: 'general.purpose',
    description: 'The U Series is quite neutral and provides resources for general purpose applications.',
    sizes: [
      ['nano', 1, '512Mi'],
      ['micro', 1, '1Gi'],
      ['small', 1, '2Gi'],
      ['medium', 1, '4Gi'],
      ['2xmedium', 2, '4Gi'],
      ['large', 2, '8Gi'],
      ['xlarge', 4, '16Gi'],
      ['2xlarge', 8, '32Gi'],
      ['4xlarge', 16, '64Gi'],
      ['8xlarge', 32, '128Gi'],
    ],
  },
  o1: {
    className: 'overcommitted',
    description: 'The O Series is based on the U Series, with the only difference being that memory is overcommitted.',
    sizes: [
      ['nano', 1, '512Mi'],
      ['micro', 1, '1Gi'],
      ['small', 1, '2Gi'],
      ['medium', 1, '4Gi'],
      ['large', 2, '8Gi'],
      ['xlarge', 4, '16Gi'],
      ['2xlarge', 8, '32Gi'],
      ['4xlarge', 16, '64Gi'],
      ['8xlarge', 32, '128Gi'],
    ],
  },
  cx1: {
    className: 'compute.exclusive',
    description: 'The CX Series provides exclusive compute resources for compute intensive applications.',
    sizes: [
      ['medium', 1, '2Gi'],
      ['large', 2, '4Gi'],
      ['xlarge', 4, '8Gi'],
      ['2xlarge', 8, '16Gi'],
      ['4xlarge', 16, '32Gi'],
      ['8xlarge', 32, '64Gi'],
    ],
  },
  m1: {
    className: 'memory',
    description: 'The M Series provides resources for memory intensive applications.',
    sizes: [
      ['large', 2, '16Gi'],
      ['xlarge', 4, '32Gi'],
      ['2xlarge', 8, '64Gi'],
      ['4xlarge', 16, '128Gi'],
      ['8xlarge', 32, '256Gi'],
    ],
  },
};

/** Per-series spec beyond cpu.guest and memory.guest (the series' characteristics). */
function seriesSpec(series: string, cpu: number, memory: string): Record<string, unknown> {
  switch (series) {
    case 'o1':
      return { cpu: { guest: cpu }, memory: { guest: memory, overcommitPercent: 50 } };
    case 'cx1':
      return {
        cpu: { guest: cpu, dedicatedCPUPlacement: true, isolateEmulatorThread: true, numa: { guestMappingPassthrough: {} } },
        memory: { guest: memory, hugepages: { pageSize: '2Mi' } },
        ioThreadsPolicy: 'auto',
      };
    case 'm1':
      return { cpu: { guest: cpu }, memory: { guest: memory, hugepages: { pageSize: '2Mi' } } };
    default:
      return { cpu: { guest: cpu }, memory: { guest: memory } };
  }
}

export interface InstancetypeSize {
  name: string;
  cpu: number;
  memory: string;
}

/** Every size of the default set, e.g. { name: 'u1.medium', cpu: 1, memory: '4Gi' }. */
export function commonInstancetypeSizes(): InstancetypeSize[] {
  return Object.entries(SERIES).flatMap(([series, s]) => s.sizes.map(([size, cpu, memory]) => ({ name: `${series}.${size}`, cpu, memory })));
}

/** The VirtualMachineClusterInstancetypes of the default set. */
export function commonClusterInstancetypes(): KubeObject[] {
  return Object.entries(SERIES).flatMap(([series, s]) =>
    s.sizes.map(([size, cpu, memory]) => ({
      apiVersion: API_VERSION,
      kind: CLUSTER_INSTANCETYPE,
      metadata: {
        name: `${series}.${size}`,
        labels: {
          'instancetype.kubevirt.io/vendor': VENDOR,
          'instancetype.kubevirt.io/common-instancetypes-version': VERSION,
          'instancetype.kubevirt.io/class': s.className,
          'instancetype.kubevirt.io/version': '1',
          'instancetype.kubevirt.io/size': size,
          'instancetype.kubevirt.io/cpu': String(cpu),
          'instancetype.kubevirt.io/memory': memory,
          ...(series === 'cx1' ? { 'instancetype.kubevirt.io/dedicatedCPUPlacement': 'true', 'instancetype.kubevirt.io/isolateEmulatorThread': 'true' } : {}),
          ...(series === 'cx1' || series === 'm1' ? { 'instancetype.kubevirt.io/hugepages': '2Mi' } : {}),
        },
        annotations: {
          'instancetype.kubevirt.io/description': s.description,
          'instancetype.kubevirt.io/displayName': `${series} ${size}`,
        },
      },
      spec: seriesSpec(series, cpu, memory),
    })),
  );
}

interface PreferenceRow {
  name: string;
  displayName: string;
  os: 'linux' | 'windows';
  cpu?: number;
  memory: string;
  spec: Record<string, unknown>;
}

/** Linux guests with virtio drivers: virtio disks and NICs, an RNG. */
const VIRTIO_LINUX = { devices: { preferredDiskBus: 'virtio', preferredInterfaceModel: 'virtio', preferredRng: {} } };
const EFI_SECURE = { firmware: { preferredUseEfi: true, preferredUseSecureBoot: true }, features: { preferredSmm: {} } };
/** Windows without virtio drivers: SATA disks, e1000e NICs, EFI with Secure Boot, Hyper-V enlightenments, a tablet. */
const WINDOWS = {
  clock: {
    preferredClockOffset: { utc: {} },
    preferredTimer: { hpet: { present: false }, hyperv: {}, pit: { tickPolicy: 'delay' }, rtc: { tickPolicy: 'catchup' } },
  },
  cpu: { preferredCPUTopology: 'preferSockets' },
  devices: { preferredDiskBus: 'sata', preferredInterfaceModel: 'e1000e', preferredInputBus: 'usb', preferredInputType: 'tablet', preferredTPM: {} },
  features: { preferredAcpi: {}, preferredApic: {}, preferredHyperv: { relaxed: {}, spinlocks: { spinlocks: 8191 }, vapic: {} }, preferredSmm: {} },
  firmware: { preferredUseEfi: true, preferredUseSecureBoot: true },
  preferredTerminationGracePeriodSeconds: 3600,
};

const PREFERENCES: PreferenceRow[] = [
  { name: 'alpine', displayName: 'Alpine', os: 'linux', memory: '512Mi', spec: { devices: { preferredDiskBus: 'virtio', preferredInterfaceModel: 'virtio' } } },
  { name: 'cirros', displayName: 'Cirros', os: 'linux', memory: '256Mi', spec: { devices: { preferredDiskBus: 'virtio', preferredInterfaceModel: 'virtio' } } },
  { name: 'fedora', displayName: 'Fedora (amd64)', os: 'linux', memory: '2Gi', spec: { ...VIRTIO_LINUX, ...EFI_SECURE } },
  { name: 'ubuntu', displayName: 'Ubuntu', os: 'linux', memory: '1.5Gi', spec: VIRTIO_LINUX },
  { name: 'debian', displayName: 'Debian', os: 'linux', memory: '1Gi', spec: VIRTIO_LINUX },
  { name: 'centos.stream9', displayName: 'CentOS Stream 9', os: 'linux', cpu: 1, memory: '1.5Gi', spec: VIRTIO_LINUX },
  { name: 'centos.stream10', displayName: 'CentOS Stream 10', os: 'linux', cpu: 1, memory: '1.5Gi', spec: VIRTIO_LINUX },
  { name: 'rhel.8', displayName: 'Red Hat Enterprise Linux 8', os: 'linux', cpu: 1, memory: '1.5Gi', spec: VIRTIO_LINUX },
  { name: 'rhel.9', displayName: 'Red Hat Enterprise Linux 9 (amd64)', os: 'linux', cpu: 1, memory: '1.5Gi', spec: VIRTIO_LINUX },
  { name: 'rhel.10', displayName: 'Red Hat Enterprise Linux 10 Beta (amd64)', os: 'linux', cpu: 1, memory: '1.5Gi', spec: VIRTIO_LINUX },
  { name: 'opensuse.leap', displayName: 'OpenSUSE Leap', os: 'linux', cpu: 1, memory: '2Gi', spec: VIRTIO_LINUX },
  { name: 'opensuse.tumbleweed', displayName: 'OpenSUSE Tumbleweed', os: 'linux', cpu: 1, memory: '2Gi', spec: VIRTIO_LINUX },
  { name: 'sles', displayName: 'SUSE Linux Enterprise Server', os: 'linux', cpu: 1, memory: '2Gi', spec: VIRTIO_LINUX },
  { name: 'windows.10', displayName: 'Microsoft Windows 10', os: 'windows', cpu: 1, memory: '2Gi', spec: WINDOWS },
  { name: 'windows.11', displayName: 'Microsoft Windows 11', os: 'windows', cpu: 2, memory: '4Gi', spec: WINDOWS },
  { name: 'windows.2k19', displayName: 'Microsoft Windows Server 2019', os: 'windows', cpu: 1, memory: '2Gi', spec: WINDOWS },
  { name: 'windows.2k22', displayName: 'Microsoft Windows Server 2022', os: 'windows', cpu: 1, memory: '4Gi', spec: WINDOWS },
  { name: 'windows.2k25', displayName: 'Microsoft Windows Server 2025', os: 'windows', cpu: 2, memory: '4Gi', spec: WINDOWS },
];

/** The VirtualMachineClusterPreferences of the default set. */
export function commonClusterPreferences(): KubeObject[] {
  return PREFERENCES.map((p) => ({
    apiVersion: API_VERSION,
    kind: CLUSTER_PREFERENCE,
    metadata: {
      name: p.name,
      labels: {
        'instancetype.kubevirt.io/vendor': VENDOR,
        'instancetype.kubevirt.io/common-instancetypes-version': VERSION,
        'instancetype.kubevirt.io/os-type': p.os,
        'instancetype.kubevirt.io/arch': 'amd64',
      },
      annotations: { 'openshift.io/display-name': p.displayName, 'instancetype.kubevirt.io/displayName': p.displayName },
    },
    spec: {
      ...structuredClone(p.spec),
      requirements: { ...(p.cpu ? { cpu: { guest: p.cpu } } : {}), memory: { guest: p.memory } },
    },
  }));
}
