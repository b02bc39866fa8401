/** The resources the controllers and the agent work with, as client references (one place, not one per file). */
import { findByResource } from './kinds.ts';
import type { KindInfo } from './types.ts';

const ref = (group: string, version: string, plural: string): KindInfo => findByResource(group, version, plural)!;

export const PVCS = ref('', 'v1', 'persistentvolumeclaims');
export const NODES = ref('', 'v1', 'nodes');
export const SECRETS = ref('', 'v1', 'secrets');
export const CONFIGMAPS = ref('', 'v1', 'configmaps');
export const STORAGE_CLASSES = ref('storage.k8s.io', 'v1', 'storageclasses');
export const DATAVOLUMES = ref('cdi.kubevirt.io', 'v1beta1', 'datavolumes');
export const DATASOURCES = ref('cdi.kubevirt.io', 'v1beta1', 'datasources');
export const DATAIMPORTCRONS = ref('cdi.kubevirt.io', 'v1beta1', 'dataimportcrons');
export const VMS = ref('kubevirt.io', 'v1', 'virtualmachines');
export const VMIS = ref('kubevirt.io', 'v1', 'virtualmachineinstances');
export const VMIMS = ref('kubevirt.io', 'v1', 'virtualmachineinstancemigrations');
export const KUBEVIRTS = ref('kubevirt.io', 'v1', 'kubevirts');
export const MIGRATION_POLICIES = ref('migrations.kubevirt.io', 'v1alpha1', 'migrationpolicies');
export const NAMESPACES = ref('', 'v1', 'namespaces');
export const VMSNAPSHOTS = ref('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshots');
export const VMSNAPSHOTCONTENTS = ref('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshotcontents');
export const VMRESTORES = ref('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinerestores');
export const VMCLONES = ref('clone.kubevirt.io', 'v1beta1', 'virtualmachineclones');
export const SERVICES = ref('', 'v1', 'services');
export const EVENTS = ref('', 'v1', 'events');
export const IPADDRESSES = ref('networking.k8s.io', 'v1', 'ipaddresses');
export const ENDPOINTSLICES = ref('discovery.k8s.io', 'v1', 'endpointslices');
export const NNCPS = ref('nmstate.io', 'v1', 'nodenetworkconfigurationpolicies');
export const NNCES = ref('nmstate.io', 'v1beta1', 'nodenetworkconfigurationenactments');
export const NNSS = ref('nmstate.io', 'v1beta1', 'nodenetworkstates');
export const NETWORK_ATTACHMENT_DEFINITIONS = ref('k8s.cni.cncf.io', 'v1', 'network-attachment-definitions');
export const FORKLIFT_PROVIDERS = ref('forklift.konveyor.io', 'v1beta1', 'providers');
export const FORKLIFT_NETWORKMAPS = ref('forklift.konveyor.io', 'v1beta1', 'networkmaps');
export const FORKLIFT_STORAGEMAPS = ref('forklift.konveyor.io', 'v1beta1', 'storagemaps');
export const FORKLIFT_PLANS = ref('forklift.konveyor.io', 'v1beta1', 'plans');
export const FORKLIFT_MIGRATIONS = ref('forklift.konveyor.io', 'v1beta1', 'migrations');
export const FORKLIFT_HOOKS = ref('forklift.konveyor.io', 'v1beta1', 'hooks');
