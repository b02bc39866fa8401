/**
 * The catalogue of kinds Vessel serves: names, scope, subresources and printer columns as the
 * upstream API server (core kinds) or the upstream CRDs (KubeVirt with its snapshot and clone
 * groups, CDI) declare them, so that `kubectl get vm`, `kubectl get dv -o wide`, short names and
 * `kubectl get all` behave the same.
 */
import type { KindInfo, KubeObject, PrinterColumn } from './types.ts';

const AGE: PrinterColumn = { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' };

/** KubeVirt's columns for VirtualMachineInstanceReplicaSet and VirtualMachinePool. */
const REPLICA_COLUMNS: PrinterColumn[] = [
  { name: 'Desired', type: 'integer', jsonPath: '.spec.replicas', description: 'Number of desired VirtualMachineInstances' },
  { name: 'Current', type: 'integer', jsonPath: '.status.replicas', description: 'Number of managed and not final or deleted VirtualMachineInstances' },
  {
    name: 'Ready',
    type: 'integer',
    jsonPath: '.status.readyReplicas',
    description: 'Number of managed VirtualMachineInstances which are ready to receive traffic',
  },
  AGE,
];

function kind(k: Omit<KindInfo, 'listKind' | 'verbs'> & { verbs?: string[] }): KindInfo {
  return { ...k, listKind: `${k.kind}List`, verbs: k.verbs ?? [] };
}

/**
 * Core kinds' columns mirror kubectl's built-in table printers where a JSONPath can express them
 * (e.g. Service PORT(S) shows the port numbers, not "80/TCP"). The API server's table.ts computes
 * what a path cannot: Node STATUS (Ready/NotReady/Unknown, SchedulingDisabled) and the
 * StorageClass "(default)" mark.
 */
export const kinds: readonly KindInfo[] = Object.freeze([
  kind({
    group: '',
    version: 'v1',
    kind: 'Namespace',
    plural: 'namespaces',
    singular: 'namespace',
    shortNames: ['ns'],
    categories: [],
    namespaced: false,
    statusSubresource: true,
    printerColumns: [{ name: 'Status', type: 'string', jsonPath: '.status.phase', description: 'The phase of the namespace' }, AGE],
  }),
  kind({
    group: '',
    version: 'v1',
    kind: 'Secret',
    plural: 'secrets',
    singular: 'secret',
    shortNames: [],
    categories: [],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [{ name: 'Type', type: 'string', jsonPath: '.type' }, { name: 'Data', type: 'integer', jsonPath: '.data', count: true }, AGE],
  }),
  kind({
    group: '',
    version: 'v1',
    kind: 'ConfigMap',
    plural: 'configmaps',
    singular: 'configmap',
    shortNames: ['cm'],
    categories: [],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [{ name: 'Data', type: 'integer', jsonPath: '.data', count: true }, AGE],
  }),
  kind({
    group: '',
    version: 'v1',
    kind: 'Event',
    plural: 'events',
    singular: 'event',
    shortNames: ['ev'],
    categories: [],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [
      { name: 'Last Seen', type: 'date', jsonPath: '.lastTimestamp' },
      { name: 'Type', type: 'string', jsonPath: '.type' },
      { name: 'Reason', type: 'string', jsonPath: '.reason' },
      { name: 'Object', type: 'string', jsonPath: '.involvedObject.name' },
      { name: 'Subobject', type: 'string', jsonPath: '.involvedObject.fieldPath', priority: 1 },
      { name: 'Source', type: 'string', jsonPath: '.source.component', priority: 1 },
      { name: 'Message', type: 'string', jsonPath: '.message' },
      { name: 'First Seen', type: 'date', jsonPath: '.firstTimestamp', priority: 1 },
      { name: 'Count', type: 'integer', jsonPath: '.count', priority: 1 },
    ],
  }),
  kind({
    group: '',
    version: 'v1',
    kind: 'Node',
    plural: 'nodes',
    singular: 'node',
    shortNames: ['no'],
    categories: [],
    namespaced: false,
    statusSubresource: true,
    printerColumns: [
      {
        name: 'Status',
        type: 'string',
        jsonPath: ".status.conditions[?(@.type=='Ready')].status",
        description: 'Ready, NotReady or Unknown from the Ready condition, with SchedulingDisabled when unschedulable',
      },
      AGE,
      { name: 'Version', type: 'string', jsonPath: '.status.nodeInfo.kubeletVersion' },
      { name: 'Internal-IP', type: 'string', jsonPath: ".status.addresses[?(@.type=='InternalIP')].address", priority: 1 },
      { name: 'OS-Image', type: 'string', jsonPath: '.status.nodeInfo.osImage', priority: 1 },
      { name: 'Kernel-Version', type: 'string', jsonPath: '.status.nodeInfo.kernelVersion', priority: 1 },
    ],
  }),
  kind({
    group: '',
    version: 'v1',
    kind: 'Service',
    plural: 'services',
    singular: 'service',
    shortNames: ['svc'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'Type', type: 'string', jsonPath: '.spec.type' },
      { name: 'Cluster-IP', type: 'string', jsonPath: '.spec.clusterIP' },
      { name: 'External-IP', type: 'string', jsonPath: '.status.loadBalancer.ingress[*].ip' },
      { name: 'Port(s)', type: 'string', jsonPath: '.spec.ports[*].port' },
      AGE,
      { name: 'Selector', type: 'string', jsonPath: '.spec.selector', priority: 1 },
    ],
  }),
  kind({
    group: '',
    version: 'v1',
    kind: 'PersistentVolumeClaim',
    plural: 'persistentvolumeclaims',
    singular: 'persistentvolumeclaim',
    shortNames: ['pvc'],
    categories: [],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'Status', type: 'string', jsonPath: '.status.phase' },
      { name: 'Volume', type: 'string', jsonPath: '.spec.volumeName' },
      { name: 'Capacity', type: 'string', jsonPath: '.status.capacity.storage' },
      { name: 'Access Modes', type: 'string', jsonPath: '.status.accessModes[*]' },
      { name: 'StorageClass', type: 'string', jsonPath: '.spec.storageClassName' },
      AGE,
      { name: 'VolumeMode', type: 'string', jsonPath: '.spec.volumeMode', priority: 1 },
    ],
  }),
  kind({
    group: 'storage.k8s.io',
    version: 'v1',
    kind: 'StorageClass',
    plural: 'storageclasses',
    singular: 'storageclass',
    shortNames: ['sc'],
    categories: [],
    namespaced: false,
    statusSubresource: false,
    printerColumns: [
      { name: 'Provisioner', type: 'string', jsonPath: '.provisioner' },
      { name: 'ReclaimPolicy', type: 'string', jsonPath: '.reclaimPolicy' },
      { name: 'VolumeBindingMode', type: 'string', jsonPath: '.volumeBindingMode' },
      { name: 'AllowVolumeExpansion', type: 'boolean', jsonPath: '.allowVolumeExpansion' },
      AGE,
    ],
  }),
  // The cluster network (docs/network.md): IPAM records every address it hands out as an
  // IPAddress, as kube-apiserver records ClusterIPs; Services' endpoints are EndpointSlices.
  kind({
    group: 'networking.k8s.io',
    version: 'v1',
    kind: 'IPAddress',
    plural: 'ipaddresses',
    singular: 'ipaddress',
    shortNames: [],
    categories: [],
    namespaced: false,
    statusSubresource: false,
    printerColumns: [{ name: 'ParentRef', type: 'string', jsonPath: '.spec.parentRef', description: 'resource/namespace/name of the owner of the address' }],
  }),
  kind({
    group: 'networking.k8s.io',
    version: 'v1',
    kind: 'NetworkPolicy',
    plural: 'networkpolicies',
    singular: 'networkpolicy',
    shortNames: ['netpol'],
    categories: [],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [{ name: 'Pod-Selector', type: 'string', jsonPath: '.spec.podSelector', description: 'the VMs the policy selects, as app=web' }, AGE],
  }),
  // Secondary networks (Multus' CRD, as KubeVirt users install it): spec.config is a CNI config.
  kind({
    group: 'k8s.cni.cncf.io',
    version: 'v1',
    kind: 'NetworkAttachmentDefinition',
    plural: 'network-attachment-definitions',
    singular: 'network-attachment-definition',
    shortNames: ['net-attach-def'],
    categories: [],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [AGE],
  }),
  kind({
    group: 'discovery.k8s.io',
    version: 'v1',
    kind: 'EndpointSlice',
    plural: 'endpointslices',
    singular: 'endpointslice',
    shortNames: [],
    categories: [],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [
      { name: 'AddressType', type: 'string', jsonPath: '.addressType' },
      { name: 'Ports', type: 'string', jsonPath: '.ports[*].port' },
      { name: 'Endpoints', type: 'string', jsonPath: '.endpoints[*].addresses[*]' },
      AGE,
    ],
  }),
  // scheduling.k8s.io: VMs' priorities and preemption (docs/scheduling.md); columns as kubectl's printer.
  kind({
    group: 'scheduling.k8s.io',
    version: 'v1',
    kind: 'PriorityClass',
    plural: 'priorityclasses',
    singular: 'priorityclass',
    shortNames: ['pc'],
    categories: [],
    namespaced: false,
    statusSubresource: false,
    printerColumns: [
      { name: 'Value', type: 'integer', jsonPath: '.value' },
      { name: 'Global-Default', type: 'boolean', jsonPath: '.globalDefault' },
      AGE,
      { name: 'PreemptionPolicy', type: 'string', jsonPath: '.preemptionPolicy', priority: 1 },
    ],
  }),
  // KubeVirt: names, columns and subresources as virt-operator's CRDs declare them.
  kind({
    group: 'kubevirt.io',
    version: 'v1',
    kind: 'VirtualMachine',
    plural: 'virtualmachines',
    singular: 'virtualmachine',
    shortNames: ['vm', 'vms'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      AGE,
      { name: 'Status', type: 'string', jsonPath: '.status.printableStatus', description: 'Human Readable Status' },
      { name: 'Ready', type: 'string', jsonPath: ".status.conditions[?(@.type=='Ready')].status" },
    ],
  }),
  kind({
    // No status subresource upstream: virt-handler writes VMI status through the main resource.
    group: 'kubevirt.io',
    version: 'v1',
    kind: 'VirtualMachineInstance',
    plural: 'virtualmachineinstances',
    singular: 'virtualmachineinstance',
    shortNames: ['vmi', 'vmis'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [
      AGE,
      { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
      { name: 'IP', type: 'string', jsonPath: '.status.interfaces[0].ipAddress' },
      { name: 'NodeName', type: 'string', jsonPath: '.status.nodeName' },
      { name: 'Ready', type: 'string', jsonPath: ".status.conditions[?(@.type=='Ready')].status" },
      { name: 'Live-Migratable', type: 'string', jsonPath: ".status.conditions[?(@.type=='LiveMigratable')].status", priority: 1 },
      { name: 'Paused', type: 'string', jsonPath: ".status.conditions[?(@.type=='Paused')].status", priority: 1 },
    ],
  }),
  kind({
    group: 'kubevirt.io',
    version: 'v1',
    kind: 'VirtualMachineInstanceMigration',
    plural: 'virtualmachineinstancemigrations',
    singular: 'virtualmachineinstancemigration',
    shortNames: ['vmim', 'vmims'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'Phase', type: 'string', jsonPath: '.status.phase', description: 'The current phase of VM instance migration' },
      { name: 'VMI', type: 'string', jsonPath: '.spec.vmiName', description: 'The name of the VMI to perform the migration on' },
    ],
  }),
  // Replica sets of VMIs, pools of VMs (with the scale subresource) and the deprecated VMI presets.
  kind({
    group: 'kubevirt.io',
    version: 'v1',
    kind: 'VirtualMachineInstanceReplicaSet',
    plural: 'virtualmachineinstancereplicasets',
    singular: 'virtualmachineinstancereplicaset',
    shortNames: ['vmirs', 'vmirss'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    scaleSubresource: true,
    printerColumns: REPLICA_COLUMNS,
  }),
  kind({
    group: 'kubevirt.io',
    version: 'v1',
    kind: 'VirtualMachineInstancePreset',
    plural: 'virtualmachineinstancepresets',
    singular: 'virtualmachineinstancepreset',
    shortNames: ['vmipreset', 'vmipresets'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [AGE],
  }),
  // Stored at v1beta1 and served at v1alpha1 too, as KubeVirt's CRD (conversion None: the same fields).
  kind({
    group: 'pool.kubevirt.io',
    version: 'v1beta1',
    servedVersions: ['v1beta1', 'v1alpha1'],
    kind: 'VirtualMachinePool',
    plural: 'virtualmachinepools',
    singular: 'virtualmachinepool',
    shortNames: ['vmpool', 'vmpools'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    scaleSubresource: true,
    printerColumns: REPLICA_COLUMNS,
  }),
  // The cluster's configuration (virt-operator's CRD; Vessel serves and reads it, nothing deploys from it).
  kind({
    group: 'kubevirt.io',
    version: 'v1',
    kind: 'KubeVirt',
    plural: 'kubevirts',
    singular: 'kubevirt',
    shortNames: ['kv', 'kvs'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [AGE, { name: 'Phase', type: 'string', jsonPath: '.status.phase' }],
  }),
  kind({
    group: 'migrations.kubevirt.io',
    version: 'v1alpha1',
    kind: 'MigrationPolicy',
    plural: 'migrationpolicies',
    singular: 'migrationpolicy',
    shortNames: [],
    categories: ['all'],
    namespaced: false,
    statusSubresource: true,
    printerColumns: [AGE],
  }),
  // Instancetypes and preferences (docs/instancetypes.md): names as KubeVirt's CRDs declare them.
  kind({
    group: 'instancetype.kubevirt.io',
    version: 'v1beta1',
    kind: 'VirtualMachineInstancetype',
    plural: 'virtualmachineinstancetypes',
    singular: 'virtualmachineinstancetype',
    shortNames: ['vminstancetype', 'vminstancetypes', 'vmf', 'vmfs'],
    categories: [],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [AGE],
  }),
  kind({
    group: 'instancetype.kubevirt.io',
    version: 'v1beta1',
    kind: 'VirtualMachineClusterInstancetype',
    plural: 'virtualmachineclusterinstancetypes',
    singular: 'virtualmachineclusterinstancetype',
    shortNames: ['vmclusterinstancetype', 'vmclusterinstancetypes', 'vmcf', 'vmcfs'],
    categories: [],
    namespaced: false,
    statusSubresource: false,
    printerColumns: [AGE],
  }),
  kind({
    group: 'instancetype.kubevirt.io',
    version: 'v1beta1',
    kind: 'VirtualMachinePreference',
    plural: 'virtualmachinepreferences',
    singular: 'virtualmachinepreference',
    shortNames: ['vmpref', 'vmprefs', 'vmp', 'vmps'],
    categories: [],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [AGE],
  }),
  kind({
    group: 'instancetype.kubevirt.io',
    version: 'v1beta1',
    kind: 'VirtualMachineClusterPreference',
    plural: 'virtualmachineclusterpreferences',
    singular: 'virtualmachineclusterpreference',
    shortNames: ['vmcp', 'vmcps'],
    categories: [],
    namespaced: false,
    statusSubresource: false,
    printerColumns: [AGE],
  }),
  // The instancetype and preference a VM started with are kept in ControllerRevisions (kubectl's columns).
  kind({
    group: 'apps',
    version: 'v1',
    kind: 'ControllerRevision',
    plural: 'controllerrevisions',
    singular: 'controllerrevision',
    shortNames: [],
    categories: [],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [
      { name: 'Controller', type: 'string', jsonPath: '.metadata.ownerReferences[0].name' },
      { name: 'Revision', type: 'integer', jsonPath: '.revision' },
      AGE,
    ],
  }),
  // CDI: from the kubebuilder markers of CDI's v1beta1 types.
  kind({
    group: 'cdi.kubevirt.io',
    version: 'v1beta1',
    kind: 'DataVolume',
    plural: 'datavolumes',
    singular: 'datavolume',
    shortNames: ['dv', 'dvs'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'Phase', type: 'string', jsonPath: '.status.phase', description: 'The phase the data volume is in' },
      { name: 'Progress', type: 'string', jsonPath: '.status.progress', description: 'Transfer progress in percentage if known, N/A otherwise' },
      { name: 'Restarts', type: 'integer', jsonPath: '.status.restartCount', description: 'The number of times the transfer has been restarted.' },
      AGE,
    ],
  }),
  kind({
    group: 'cdi.kubevirt.io',
    version: 'v1beta1',
    kind: 'DataSource',
    plural: 'datasources',
    singular: 'datasource',
    shortNames: ['das'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: false,
    printerColumns: [AGE],
  }),
  kind({
    group: 'cdi.kubevirt.io',
    version: 'v1beta1',
    kind: 'DataImportCron',
    plural: 'dataimportcrons',
    singular: 'dataimportcron',
    shortNames: ['dic', 'dics'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [{ name: 'Format', type: 'string', jsonPath: '.status.sourceFormat', description: 'The format in which created sources are saved' }, AGE],
  }),
  // KubeVirt snapshots and clones: as virt-operator's CRDs declare them (no Age column: a CRD
  // that declares printer columns gets only those), served at v1alpha1 too: upstream one schema
  // validates both versions (conversion None), so v1alpha1 shares v1beta1's and converts as is.
  kind({
    group: 'snapshot.kubevirt.io',
    version: 'v1beta1',
    servedVersions: ['v1beta1', 'v1alpha1'],
    kind: 'VirtualMachineSnapshot',
    plural: 'virtualmachinesnapshots',
    singular: 'virtualmachinesnapshot',
    shortNames: ['vmsnapshot', 'vmsnapshots'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'SourceKind', type: 'string', jsonPath: '.spec.source.kind' },
      { name: 'SourceName', type: 'string', jsonPath: '.spec.source.name' },
      { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
      { name: 'ReadyToUse', type: 'boolean', jsonPath: '.status.readyToUse' },
      { name: 'CreationTime', type: 'date', jsonPath: '.status.creationTime' },
      { name: 'Error', type: 'string', jsonPath: '.status.error.message' },
    ],
  }),
  kind({
    group: 'snapshot.kubevirt.io',
    version: 'v1beta1',
    servedVersions: ['v1beta1', 'v1alpha1'],
    kind: 'VirtualMachineSnapshotContent',
    plural: 'virtualmachinesnapshotcontents',
    singular: 'virtualmachinesnapshotcontent',
    shortNames: ['vmsnapshotcontent', 'vmsnapshotcontents'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'ReadyToUse', type: 'boolean', jsonPath: '.status.readyToUse' },
      { name: 'CreationTime', type: 'date', jsonPath: '.status.creationTime' },
      { name: 'Error', type: 'string', jsonPath: '.status.error.message' },
    ],
  }),
  kind({
    group: 'snapshot.kubevirt.io',
    version: 'v1beta1',
    servedVersions: ['v1beta1', 'v1alpha1'],
    kind: 'VirtualMachineRestore',
    plural: 'virtualmachinerestores',
    singular: 'virtualmachinerestore',
    shortNames: ['vmrestore', 'vmrestores'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'TargetKind', type: 'string', jsonPath: '.spec.target.kind' },
      { name: 'TargetName', type: 'string', jsonPath: '.spec.target.name' },
      { name: 'Complete', type: 'boolean', jsonPath: '.status.complete' },
      { name: 'RestoreTime', type: 'date', jsonPath: '.status.restoreTime' },
      { name: 'Error', type: 'string', jsonPath: '.status.error.message' },
    ],
  }),
  kind({
    group: 'clone.kubevirt.io',
    version: 'v1beta1',
    servedVersions: ['v1beta1', 'v1alpha1'],
    kind: 'VirtualMachineClone',
    plural: 'virtualmachineclones',
    singular: 'virtualmachineclone',
    shortNames: ['vmclone', 'vmclones'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
      { name: 'SourceVirtualMachine', type: 'string', jsonPath: '.spec.source.name' },
      { name: 'TargetVirtualMachine', type: 'string', jsonPath: '.spec.target.name' },
    ],
  }),
  kind({
    group: 'export.kubevirt.io',
    version: 'v1beta1',
    kind: 'VirtualMachineExport',
    plural: 'virtualmachineexports',
    singular: 'virtualmachineexport',
    shortNames: ['vmexport', 'vmexports'],
    categories: ['all'],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'SourceKind', type: 'string', jsonPath: '.spec.source.kind' },
      { name: 'SourceName', type: 'string', jsonPath: '.spec.source.name' },
      { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
    ],
  }),
  // Node network configuration (docs/network.md), served as kubernetes-nmstate's CRDs: the
  // policy in v1, the per-node state and enactments in v1beta1; columns as its printcolumns.
  kind({
    group: 'nmstate.io',
    version: 'v1',
    kind: 'NodeNetworkConfigurationPolicy',
    plural: 'nodenetworkconfigurationpolicies',
    singular: 'nodenetworkconfigurationpolicy',
    shortNames: ['nncp'],
    categories: [],
    namespaced: false,
    statusSubresource: true,
    printerColumns: [
      { name: 'Status', type: 'string', jsonPath: '.status.conditions[?(@.status=="True")].type', description: 'Status' },
      { name: 'Reason', type: 'string', jsonPath: '.status.conditions[?(@.status=="True")].reason', description: 'Reason' },
    ],
  }),
  kind({
    group: 'nmstate.io',
    version: 'v1beta1',
    kind: 'NodeNetworkConfigurationEnactment',
    plural: 'nodenetworkconfigurationenactments',
    singular: 'nodenetworkconfigurationenactment',
    shortNames: ['nnce'],
    categories: [],
    namespaced: false,
    statusSubresource: true,
    printerColumns: [
      { name: 'Status', type: 'string', jsonPath: '.status.conditions[?(@.status=="True")].type', description: 'Status' },
      { name: 'Status Age', type: 'date', jsonPath: '.status.conditions[?(@.status=="True")].lastTransitionTime', description: 'Status Age' },
      { name: 'Reason', type: 'string', jsonPath: '.status.conditions[?(@.status=="True")].reason', description: 'Reason' },
    ],
  }),
  kind({
    group: 'nmstate.io',
    version: 'v1beta1',
    kind: 'NodeNetworkState',
    plural: 'nodenetworkstates',
    singular: 'nodenetworkstate',
    shortNames: ['nns'],
    categories: [],
    namespaced: false,
    statusSubresource: true,
    printerColumns: [AGE],
  }),
  // The migration toolkit (docs/forklift.md): Forklift's CRDs (forklift.konveyor.io), names and
  // columns as they declare them (no short names upstream).
  kind({
    group: 'forklift.konveyor.io',
    version: 'v1beta1',
    kind: 'Provider',
    plural: 'providers',
    singular: 'provider',
    shortNames: [],
    categories: [],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'Type', type: 'string', jsonPath: '.spec.type' },
      { name: 'Status', type: 'string', jsonPath: '.status.phase' },
      { name: 'Ready', type: 'string', jsonPath: ".status.conditions[?(@.type=='Ready')].status" },
      { name: 'Connected', type: 'string', jsonPath: ".status.conditions[?(@.type=='ConnectionTestSucceeded')].status" },
      { name: 'Inventory', type: 'string', jsonPath: ".status.conditions[?(@.type=='InventoryCreated')].status" },
      { name: 'URL', type: 'string', jsonPath: '.spec.url' },
      AGE,
    ],
  }),
  kind({
    group: 'forklift.konveyor.io',
    version: 'v1beta1',
    kind: 'NetworkMap',
    plural: 'networkmaps',
    singular: 'networkmap',
    shortNames: [],
    categories: [],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [{ name: 'Ready', type: 'string', jsonPath: ".status.conditions[?(@.type=='Ready')].status" }, AGE],
  }),
  kind({
    group: 'forklift.konveyor.io',
    version: 'v1beta1',
    kind: 'StorageMap',
    plural: 'storagemaps',
    singular: 'storagemap',
    shortNames: [],
    categories: [],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [{ name: 'Ready', type: 'string', jsonPath: ".status.conditions[?(@.type=='Ready')].status" }, AGE],
  }),
  kind({
    group: 'forklift.konveyor.io',
    version: 'v1beta1',
    kind: 'Plan',
    plural: 'plans',
    singular: 'plan',
    shortNames: [],
    categories: [],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'Ready', type: 'string', jsonPath: ".status.conditions[?(@.type=='Ready')].status" },
      { name: 'Executing', type: 'string', jsonPath: ".status.conditions[?(@.type=='Executing')].status" },
      { name: 'Succeeded', type: 'string', jsonPath: ".status.conditions[?(@.type=='Succeeded')].status" },
      { name: 'Failed', type: 'string', jsonPath: ".status.conditions[?(@.type=='Failed')].status" },
      AGE,
    ],
  }),
  kind({
    group: 'forklift.konveyor.io',
    version: 'v1beta1',
    kind: 'Migration',
    plural: 'migrations',
    singular: 'migration',
    shortNames: [],
    categories: [],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'Ready', type: 'string', jsonPath: ".status.conditions[?(@.type=='Ready')].status" },
      { name: 'Running', type: 'string', jsonPath: ".status.conditions[?(@.type=='Running')].status" },
      { name: 'Succeeded', type: 'string', jsonPath: ".status.conditions[?(@.type=='Succeeded')].status" },
      { name: 'Failed', type: 'string', jsonPath: ".status.conditions[?(@.type=='Failed')].status" },
      AGE,
    ],
  }),
  kind({
    group: 'forklift.konveyor.io',
    version: 'v1beta1',
    kind: 'Hook',
    plural: 'hooks',
    singular: 'hook',
    shortNames: [],
    categories: [],
    namespaced: true,
    statusSubresource: true,
    printerColumns: [
      { name: 'Ready', type: 'string', jsonPath: ".status.conditions[?(@.type=='Ready')].status" },
      { name: 'Image', type: 'string', jsonPath: '.spec.image' },
      AGE,
    ],
  }),
]);

/** OpenAPI component schema name of each kind (and `<name>List` for its list), as in upstream documents. */
const SCHEMA_NAMES: Record<string, string> = {
  '/v1/Namespace': 'io.k8s.api.core.v1.Namespace',
  '/v1/Secret': 'io.k8s.api.core.v1.Secret',
  '/v1/ConfigMap': 'io.k8s.api.core.v1.ConfigMap',
  '/v1/Event': 'io.k8s.api.core.v1.Event',
  '/v1/Node': 'io.k8s.api.core.v1.Node',
  '/v1/Service': 'io.k8s.api.core.v1.Service',
  '/v1/PersistentVolumeClaim': 'io.k8s.api.core.v1.PersistentVolumeClaim',
  'storage.k8s.io/v1/StorageClass': 'io.k8s.api.storage.v1.StorageClass',
  'networking.k8s.io/v1/IPAddress': 'io.k8s.api.networking.v1.IPAddress',
  'networking.k8s.io/v1/NetworkPolicy': 'io.k8s.api.networking.v1.NetworkPolicy',
  'discovery.k8s.io/v1/EndpointSlice': 'io.k8s.api.discovery.v1.EndpointSlice',
  'scheduling.k8s.io/v1/PriorityClass': 'io.k8s.api.scheduling.v1.PriorityClass',
  'k8s.cni.cncf.io/v1/NetworkAttachmentDefinition': 'io.cncf.cni.k8s.v1.NetworkAttachmentDefinition',
  'kubevirt.io/v1/VirtualMachine': 'io.kubevirt.v1.VirtualMachine',
  'kubevirt.io/v1/VirtualMachineInstance': 'io.kubevirt.v1.VirtualMachineInstance',
  'kubevirt.io/v1/VirtualMachineInstanceMigration': 'io.kubevirt.v1.VirtualMachineInstanceMigration',
  'kubevirt.io/v1/KubeVirt': 'io.kubevirt.v1.KubeVirt',
  'kubevirt.io/v1/VirtualMachineInstanceReplicaSet': 'io.kubevirt.v1.VirtualMachineInstanceReplicaSet',
  'kubevirt.io/v1/VirtualMachineInstancePreset': 'io.kubevirt.v1.VirtualMachineInstancePreset',
  'pool.kubevirt.io/v1alpha1/VirtualMachinePool': 'io.kubevirt.pool.v1alpha1.VirtualMachinePool',
  'pool.kubevirt.io/v1beta1/VirtualMachinePool': 'io.kubevirt.pool.v1beta1.VirtualMachinePool',
  'migrations.kubevirt.io/v1alpha1/MigrationPolicy': 'io.kubevirt.migrations.v1alpha1.MigrationPolicy',
  'instancetype.kubevirt.io/v1beta1/VirtualMachineInstancetype': 'io.kubevirt.instancetype.v1beta1.VirtualMachineInstancetype',
  'instancetype.kubevirt.io/v1beta1/VirtualMachineClusterInstancetype': 'io.kubevirt.instancetype.v1beta1.VirtualMachineClusterInstancetype',
  'instancetype.kubevirt.io/v1beta1/VirtualMachinePreference': 'io.kubevirt.instancetype.v1beta1.VirtualMachinePreference',
  'instancetype.kubevirt.io/v1beta1/VirtualMachineClusterPreference': 'io.kubevirt.instancetype.v1beta1.VirtualMachineClusterPreference',
  'apps/v1/ControllerRevision': 'io.k8s.api.apps.v1.ControllerRevision',
  'cdi.kubevirt.io/v1beta1/DataVolume': 'io.kubevirt.cdi.v1beta1.DataVolume',
  'cdi.kubevirt.io/v1beta1/DataSource': 'io.kubevirt.cdi.v1beta1.DataSource',
  'cdi.kubevirt.io/v1beta1/DataImportCron': 'io.kubevirt.cdi.v1beta1.DataImportCron',
  'snapshot.kubevirt.io/v1beta1/VirtualMachineSnapshot': 'io.kubevirt.snapshot.v1beta1.VirtualMachineSnapshot',
  'snapshot.kubevirt.io/v1alpha1/VirtualMachineSnapshot': 'io.kubevirt.snapshot.v1beta1.VirtualMachineSnapshot',
  'snapshot.kubevirt.io/v1beta1/VirtualMachineSnapshotContent': 'io.kubevirt.snapshot.v1beta1.VirtualMachineSnapshotContent',
  'snapshot.kubevirt.io/v1alpha1/VirtualMachineSnapshotContent': 'io.kubevirt.snapshot.v1beta1.VirtualMachineSnapshotContent',
  'snapshot.kubevirt.io/v1beta1/VirtualMachineRestore': 'io.kubevirt.snapshot.v1beta1.VirtualMachineRestore',
  'snapshot.kubevirt.io/v1alpha1/VirtualMachineRestore': 'io.kubevirt.snapshot.v1beta1.VirtualMachineRestore',
  'clone.kubevirt.io/v1beta1/VirtualMachineClone': 'io.kubevirt.clone.v1beta1.VirtualMachineClone',
  'clone.kubevirt.io/v1alpha1/VirtualMachineClone': 'io.kubevirt.clone.v1beta1.VirtualMachineClone',
  'export.kubevirt.io/v1beta1/VirtualMachineExport': 'io.kubevirt.export.v1beta1.VirtualMachineExport',
  'nmstate.io/v1/NodeNetworkConfigurationPolicy': 'io.nmstate.v1.NodeNetworkConfigurationPolicy',
  'nmstate.io/v1beta1/NodeNetworkConfigurationEnactment': 'io.nmstate.v1beta1.NodeNetworkConfigurationEnactment',
  'nmstate.io/v1beta1/NodeNetworkState': 'io.nmstate.v1beta1.NodeNetworkState',
  'forklift.konveyor.io/v1beta1/Provider': 'io.konveyor.forklift.v1beta1.Provider',
  'forklift.konveyor.io/v1beta1/NetworkMap': 'io.konveyor.forklift.v1beta1.NetworkMap',
  'forklift.konveyor.io/v1beta1/StorageMap': 'io.konveyor.forklift.v1beta1.StorageMap',
  'forklift.konveyor.io/v1beta1/Plan': 'io.konveyor.forklift.v1beta1.Plan',
  'forklift.konveyor.io/v1beta1/Migration': 'io.konveyor.forklift.v1beta1.Migration',
  'forklift.konveyor.io/v1beta1/Hook': 'io.konveyor.forklift.v1beta1.Hook',
};

/** The OpenAPI component schema name for a kind, e.g. 'io.kubevirt.v1.VirtualMachine'. */
export function schemaNameFor(info: KindInfo): string {
  const name = SCHEMA_NAMES[`${info.group}/${info.version}/${info.kind}`];
  if (!name) throw new Error(`no schema registered for ${info.group}/${info.version} ${info.kind}`);
  return name;
}

/** "kubevirt.io/v1" or "v1" for the core group. */
export function apiVersionOf(info: KindInfo): string {
  return info.group ? `${info.group}/${info.version}` : info.version;
}

/**
 * Every kind at every version it is served at: `kinds` (the storage versions) and, for a kind
 * with several servedVersions, a KindInfo per other version (storageVersion set), in the
 * order the kind lists them. The API server routes, discovers and converts by these.
 */
export const servedKinds: readonly KindInfo[] = Object.freeze(
  kinds.flatMap((k) => (k.servedVersions ?? [k.version]).map((v) => (v === k.version ? k : Object.freeze({ ...k, version: v, storageVersion: k.version })))),
);

/** The version objects of this kind are stored at. */
export function storageVersionOf(info: KindInfo): string {
  return info.storageVersion ?? info.version;
}

/**
 * `obj`, an object of info's kind at any version it is served at (its apiVersion says which),
 * as info's version: the kind's conversion, then apiVersion set. A new object; `obj` is left as is.
 */
export function convertTo(info: KindInfo, obj: KubeObject): KubeObject {
  const to = apiVersionOf(info);
  if (obj.apiVersion === to) return obj;
  const from = typeof obj.apiVersion === 'string' ? obj.apiVersion.slice(obj.apiVersion.lastIndexOf('/') + 1) : storageVersionOf(info);
  const converted = info.convert ? info.convert(obj, from, info.version) : obj;
  return { ...converted, apiVersion: to };
}

/** `obj` (at info's version) as it is stored: at the kind's storage version. */
export function convertToStorage(info: KindInfo, obj: KubeObject): KubeObject {
  const storage = info.storageVersion ? servedKinds.find((k) => k.group === info.group && k.kind === info.kind && !k.storageVersion) : info;
  return convertTo(storage ?? info, obj);
}

const byResource = new Map<string, KindInfo>();
const byKind = new Map<string, KindInfo>();
const byName = new Map<string, KindInfo[]>();

function addName(name: string, info: KindInfo): void {
  const list = byName.get(name) ?? [];
  if (!list.includes(info)) list.push(info);
  byName.set(name, list);
}

for (const info of servedKinds) {
  byResource.set(`${info.group}/${info.version}/${info.plural}`, info);
  byKind.set(`${apiVersionOf(info)}/${info.kind}`, info);
  // kubectl accepts plural, singular, short names and the lower-cased kind, each optionally
  // qualified by group ("vm.kubevirt.io") or by version and group ("vm.v1.kubevirt.io").
  for (const n of [info.plural, info.singular, info.kind.toLowerCase(), ...info.shortNames]) {
    addName(n, info);
    if (info.group) {
      addName(`${n}.${info.group}`, info);
      addName(`${n}.${info.version}.${info.group}`, info);
    } else {
      addName(`${n}.${info.version}`, info);
    }
  }
}

/** The kind served at /api/<version>/<plural> ('' group) or /apis/<group>/<version>/<plural>. */
export function findByResource(group: string, version: string, plural: string): KindInfo | undefined {
  return byResource.get(`${group}/${version}/${plural}`);
}

/** The kind for an object's apiVersion ("v1", "kubevirt.io/v1") and kind. */
export function findByKind(apiVersion: string, kind: string): KindInfo | undefined {
  return byKind.get(`${apiVersion}/${kind}`);
}

/**
 * Resolves a kubectl-style resource name ('vm', 'vms', 'VirtualMachine', 'virtualmachines.kubevirt.io',
 * 'pvc', 'ns', 'sc.storage.k8s.io') to its kind; undefined when unknown. Case-insensitive like kubectl.
 */
export function resolveName(name: string): KindInfo | undefined {
  return byName.get(name.toLowerCase())?.[0];
}

/** Kinds in a category, for `kubectl get all`-style expansion. */
export function kindsInCategory(category: string): KindInfo[] {
  return kinds.filter((k) => k.categories.includes(category));
}

/** The API groups served, each with its versions, in a stable order (core group first). */
export function groupVersions(): Array<{ group: string; version: string }> {
  const seen = new Set<string>();
  const out: Array<{ group: string; version: string }> = [];
  for (const k of servedKinds) {
    const key = `${k.group}/${k.version}`;
    if (!seen.has(key)) {
      seen.add(key);
      out.push({ group: k.group, version: k.version });
    }
  }
  return out;
}
