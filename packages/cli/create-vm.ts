/**
 * The manifests `vessel create vm|instancetype|preference` print, as virtctl's `create` builds
 * them (same flags, same defaults, same shape): pure functions of the options and a name
 * generator, so golden tests pin the output.
 */
import { UsageError } from './errors.ts';

type Obj = Record<string, unknown>;

export interface CreateVmOptions {
  name?: string;
  runStrategy?: string;
  instancetype?: string;
  preference?: string;
  inferInstancetype?: boolean;
  inferPreference?: boolean;
  volumeImport?: string[];
  volumeContainerdisk?: string[];
  volumePvc?: string[];
  cloudInitUserData?: string;
  user?: string;
  sshKey?: string[];
  memory?: string;
  terminationGracePeriod?: number;
}

/** Random suffixes (virtctl: 5 lower-case letters and digits); a test passes a fixed one. */
export type NameGen = (prefix: string) => string;
export const randomName: NameGen = (prefix) => `${prefix}-${Math.random().toString(36).slice(2, 7).padEnd(5, '0')}`;

/** `key:value,key:value` (virtctl's volume parameter syntax). */
export function parseParams(flag: string, text: string, allowed: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of text.split(',')) {
    const i = part.indexOf(':');
    if (i <= 0) throw new UsageError(`${flag}: "${part}" is not key:value (e.g. type:ds,src:vessel-images/tiny)`);
    const key = part.slice(0, i);
    if (!allowed.includes(key)) throw new UsageError(`${flag}: unknown parameter "${key}"; known: ${allowed.join(', ')}`);
    out[key] = part.slice(i + 1);
  }
  return out;
}

/** `[kind/]name` of --instancetype and --preference (kind: the cluster kind unless given). */
function matcher(flag: string, text: string, kinds: Record<string, string>): Obj {
  const i = text.indexOf('/');
  if (i < 0) return { name: text };
  const kind = kinds[text.slice(0, i).toLowerCase()];
  if (!kind) throw new UsageError(`${flag}: unknown kind "${text.slice(0, i)}"; use one of ${Object.keys(kinds).join(', ')}`);
  return { kind, name: text.slice(i + 1) };
}

const INSTANCETYPE_KINDS: Record<string, string> = {
  virtualmachineinstancetype: 'VirtualMachineInstancetype',
  vminstancetype: 'VirtualMachineInstancetype',
  virtualmachineclusterinstancetype: 'VirtualMachineClusterInstancetype',
  vmclusterinstancetype: 'VirtualMachineClusterInstancetype',
};
const PREFERENCE_KINDS: Record<string, string> = {
  virtualmachinepreference: 'VirtualMachinePreference',
  vmpref: 'VirtualMachinePreference',
  virtualmachineclusterpreference: 'VirtualMachineClusterPreference',
  vmcpref: 'VirtualMachineClusterPreference',
};

/** "ns/name" or "name". */
function nsName(src: string): { namespace?: string; name: string } {
  const i = src.indexOf('/');
  return i < 0 ? { name: src } : { namespace: src.slice(0, i), name: src.slice(i + 1) };
}

const IMPORT_TYPES = ['ds', 'pvc', 'registry', 'http', 'blank', 'snapshot'];

/** One --volume-import: the dataVolumeTemplate and the name of its volume. */
function importVolume(text: string, gen: NameGen): { template: Obj; name: string } {
  const p = parseParams('--volume-import', text, ['type', 'src', 'name', 'size', 'storageclass', 'bootorder', 'pullmethod', 'secretref', 'certconfigmap']);
  const type = p.type;
  if (!type || !IMPORT_TYPES.includes(type)) throw new UsageError(`--volume-import: type must be one of ${IMPORT_TYPES.join(', ')}`);
  if (type === 'snapshot') throw new UsageError('--volume-import: type snapshot is not supported by Vessel yet');
  if (type !== 'blank' && !p.src) throw new UsageError(`--volume-import: type ${type} needs src`);
  if ((type === 'blank' || type === 'registry' || type === 'http') && !p.size) throw new UsageError(`--volume-import: type ${type} needs size`);
  const name = p.name || gen('imported-volume');
  const spec: Obj = {};
  switch (type) {
    case 'ds': {
      const { namespace, name: ds } = nsName(p.src!);
      spec.sourceRef = { kind: 'DataSource', name: ds, ...(namespace ? { namespace } : {}) };
      break;
    }
    case 'pvc': {
      const { namespace, name: pvc } = nsName(p.src!);
      spec.source = { pvc: { name: pvc, ...(namespace ? { namespace } : {}) } };
      break;
    }
    case 'registry':
      spec.source = { registry: { url: p.src, ...(p.pullmethod ? { pullMethod: p.pullmethod } : {}), ...(p.secretref ? { secretRef: p.secretref } : {}) } };
      break;
    case 'http':
      spec.source = {
        http: { url: p.src, ...(p.secretref ? { secretRef: p.secretref } : {}), ...(p.certconfigmap ? { certConfigMap: p.certconfigmap } : {}) },
      };
      break;
    case 'blank':
      spec.source = { blank: {} };
      break;
  }
  spec.storage = {
    ...(p.storageclass ? { storageClassName: p.storageclass } : {}),
    resources: p.size ? { requests: { storage: p.size } } : {},
  };
  return { template: { metadata: { name }, spec }, name };
}

/** The VirtualMachine manifest virtctl's `create vm` prints for these options. */
export function createVmManifest(o: CreateVmOptions, gen: NameGen = randomName): Obj {
  const name = o.name ?? gen('vm');
  if (o.cloudInitUserData && (o.user || o.sshKey?.length)) throw new UsageError('--cloud-init-user-data cannot be combined with --user or --ssh-key');
  if (o.instancetype && o.inferInstancetype) throw new UsageError('--instancetype and --infer-instancetype are mutually exclusive');
  if (o.preference && o.inferPreference) throw new UsageError('--preference and --infer-preference are mutually exclusive');
  if (o.instancetype && o.memory) throw new UsageError('--memory cannot be combined with --instancetype: the instancetype provides the memory');
  const volumes: Obj[] = [];
  const disks: Obj[] = [];
  const templates: Obj[] = [];
  for (const text of o.volumeContainerdisk ?? []) {
    const p = parseParams('--volume-containerdisk', text, ['src', 'name', 'bootorder']);
    if (!p.src) throw new UsageError('--volume-containerdisk needs src (an image)');
    const vname = p.name || gen('containerdisk');
    volumes.push({ name: vname, containerDisk: { image: p.src } });
    if (p.bootorder) disks.push({ name: vname, bootOrder: Number(p.bootorder) });
  }
  for (const text of o.volumeImport ?? []) {
    const { template, name: vname } = importVolume(text, gen);
    templates.push(template);
    volumes.push({ name: vname, dataVolume: { name: vname } });
  }
  for (const text of o.volumePvc ?? []) {
    const p = parseParams('--volume-pvc', text, ['src', 'name', 'bootorder']);
    if (!p.src) throw new UsageError('--volume-pvc needs src (a claim name)');
    volumes.push({ name: p.name || p.src, persistentVolumeClaim: { claimName: p.src } });
  }
  // virtctl infers from the first volume that can carry the labels (not a containerDisk).
  const inferFrom = volumes.find((v) => !v.containerDisk)?.name as string | undefined;
  if ((o.inferInstancetype || o.inferPreference) && !inferFrom)
    throw new UsageError('--infer-instancetype/--infer-preference need a volume to infer from (--volume-import or --volume-pvc)');
  let userData: string | undefined = o.cloudInitUserData;
  if (o.user || o.sshKey?.length) {
    const lines = [
      '#cloud-config',
      ...(o.user ? [`user: ${o.user}`] : []),
      ...(o.sshKey?.length ? ['ssh_authorized_keys:', ...o.sshKey.map((k) => `  - ${k}`)] : []),
    ];
    userData = Buffer.from(lines.join('\n') + '\n').toString('base64');
  }
  if (userData) volumes.push({ name: 'cloudinitdisk', cloudInitNoCloud: { userDataBase64: userData } });
  const hasSizing = !!(o.instancetype || o.inferInstancetype);
  const spec: Obj = {
    ...(templates.length ? { dataVolumeTemplates: templates } : {}),
    ...(o.instancetype ? { instancetype: matcher('--instancetype', o.instancetype, INSTANCETYPE_KINDS) } : {}),
    ...(o.inferInstancetype ? { instancetype: { inferFromVolume: inferFrom } } : {}),
    ...(o.preference ? { preference: matcher('--preference', o.preference, PREFERENCE_KINDS) } : {}),
    ...(o.inferPreference ? { preference: { inferFromVolume: inferFrom } } : {}),
    runStrategy: o.runStrategy ?? 'Always',
    template: {
      spec: {
        domain: {
          devices: disks.length ? { disks } : {},
          // virtctl's default guest memory when nothing else provides it.
          ...(hasSizing ? {} : { memory: { guest: o.memory ?? '512Mi' } }),
        },
        terminationGracePeriodSeconds: o.terminationGracePeriod ?? 180,
        ...(volumes.length ? { volumes } : {}),
      },
    },
  };
  return { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', metadata: { name }, spec };
}

export interface CreateInstancetypeOptions {
  name?: string;
  cpu: number;
  memory: string;
  namespaced?: boolean;
}

/** virtctl's `create instancetype --cpu N --memory Q [--namespaced]`. */
export function createInstancetypeManifest(o: CreateInstancetypeOptions, gen: NameGen = randomName): Obj {
  if (!Number.isInteger(o.cpu) || o.cpu < 1) throw new UsageError('--cpu must be a positive number of vCPUs');
  if (!o.memory) throw new UsageError('--memory is required (e.g. 2Gi)');
  return {
    apiVersion: 'instancetype.kubevirt.io/v1beta1',
    kind: o.namespaced ? 'VirtualMachineInstancetype' : 'VirtualMachineClusterInstancetype',
    metadata: { name: o.name ?? gen(o.namespaced ? 'instancetype' : 'clusterinstancetype') },
    spec: { cpu: { guest: o.cpu }, memory: { guest: o.memory } },
  };
}

export interface CreatePreferenceOptions {
  name?: string;
  namespaced?: boolean;
  cpuTopology?: string;
  machineType?: string;
  volumeStorageClass?: string;
}

/** virtctl's `create preference [--cpu-topology T] [--machine-type M] [--volume-storage-class C] [--namespaced]`. */
export function createPreferenceManifest(o: CreatePreferenceOptions, gen: NameGen = randomName): Obj {
  return {
    apiVersion: 'instancetype.kubevirt.io/v1beta1',
    kind: o.namespaced ? 'VirtualMachinePreference' : 'VirtualMachineClusterPreference',
    metadata: { name: o.name ?? gen(o.namespaced ? 'preference' : 'clusterpreference') },
    spec: {
      ...(o.cpuTopology ? { cpu: { preferredCPUTopology: o.cpuTopology } } : {}),
      ...(o.machineType ? { machine: { preferredMachineType: o.machineType } } : {}),
      ...(o.volumeStorageClass ? { volumes: { preferredStorageClassName: o.volumeStorageClass } } : {}),
    },
  };
}
