/**
 * The `vsphere` provider's inventory: one RetrievePropertiesEx over a ContainerView of the whole
 * tree (datacenters, folders, clusters, hosts, VMs, networks, datastores), turned into the
 * inventory shape the `ova` provider publishes (so maps, plans and `vessel inventory` read both),
 * with vSphere's extras: ids are managed object ids (`vm-42`, Forklift's ids too), and VMs carry
 * their uuid, power state, snapshots, CBT flag, host and datacenter.
 */
import type { Inventory, InventoryVm } from '../ova.ts';
import { kid, kids, type XmlElement } from '../xml.ts';
import { moOf, parseDatastorePath, type ObjectContent, type VsphereClient } from './soap.ts';

/** The paths read per type. */
export const INVENTORY_PATHS: Record<string, string[]> = {
  Datacenter: ['name', 'parent'],
  Folder: ['name', 'parent', 'childType'],
  ClusterComputeResource: ['name', 'parent'],
  ComputeResource: ['name', 'parent'],
  HostSystem: ['name', 'parent'],
  VirtualMachine: [
    'name',
    'parent',
    'config.uuid',
    'config.guestId',
    'config.firmware',
    'config.template',
    'config.changeTrackingEnabled',
    'config.hardware.numCPU',
    'config.hardware.numCoresPerSocket',
    'config.hardware.memoryMB',
    'config.hardware.device',
    'runtime.powerState',
    'runtime.host',
    'snapshot',
  ],
  Network: ['name'],
  Datastore: ['name', 'parent', 'summary.capacity', 'summary.freeSpace', 'summary.type'],
};

const text = (el: XmlElement | undefined): string => el?.text.trim() ?? '';
const num = (el: XmlElement | undefined): number => Number(text(el)) || 0;

/** Snapshot names, depth first, from a VirtualMachineSnapshotInfo. */
function snapshotNames(info: XmlElement | undefined): string[] {
  const walk = (trees: XmlElement[]): string[] => trees.flatMap((t) => [text(kid(t, 'name')), ...walk(kids(t, 'childSnapshotList'))]);
  return walk(kids(info, 'rootSnapshotList'));
}

/** Disks and NICs of a VM's `config.hardware.device` (ArrayOfVirtualDevice). */
export function parseDevices(
  devices: XmlElement | undefined,
  datastoreByName: Map<string, string>,
): { disks: InventoryVm['disks']; nics: InventoryVm['nics']; unsupported: string[] } {
  const disks: InventoryVm['disks'] = [];
  const nics: InventoryVm['nics'] = [];
  const unsupported: string[] = [];
  for (const d of kids(devices, 'VirtualDevice')) {
    const type = d.attrs.type ?? '';
    const backing = kid(d, 'backing');
    const label = text(kid(kid(d, 'deviceInfo'), 'label'));
    if (type === 'VirtualDisk') {
      const file = text(kid(backing, 'fileName'));
      const ds = moOf(kid(backing, 'datastore'))?.value ?? datastoreByName.get(parseDatastorePath(file)?.datastore ?? '') ?? '';
      const bytes = num(kid(d, 'capacityInBytes')) || num(kid(d, 'capacityInKB')) * 1024;
      disks.push({
        id: text(kid(d, 'key')),
        file,
        capacity: bytes,
        format: 'vmdk',
        datastore: ds,
        ...(backing?.attrs.type === 'VirtualDiskRawDiskMappingVer1BackingInfo' ? { rdm: true } : {}),
      });
      if (kid(backing, 'sharing') && text(kid(backing, 'sharing')) !== 'sharingNone') unsupported.push(`${label}: shared disk`);
    } else if (kid(d, 'macAddress')) {
      const network = moOf(kid(backing, 'network'))?.value || text(kid(kid(backing, 'port'), 'portgroupKey')) || text(kid(backing, 'deviceName'));
      nics.push({ name: label || `nic${nics.length}`, network, mac: text(kid(d, 'macAddress')).toLowerCase(), model: type });
    }
  }
  return { disks, nics, unsupported };
}

/** A vSphere VM in the inventory: the shared fields and vSphere's own. */
export interface VsphereVm extends InventoryVm {
  uuid: string;
  powerState: string;
  snapshots: string[];
  changeTrackingEnabled: boolean;
  template: boolean;
  host: string;
  /** The datacenter's inventory path (the `dcPath` of datastore downloads). */
  datacenter: string;
  /** Devices Vessel would not carry over (shared disks, raw device mappings). */
  unsupported: string[];
}

/** The inventory from the objects RetrievePropertiesEx returned (pure; unit-tested). */
export function buildInventory(objects: ObjectContent[]): Inventory {
  const byId = new Map(objects.map((o) => [o.obj.value, o]));
  const name = (id: string): string => text(byId.get(id)?.props.get('name'));
  const parent = (id: string): string => moOf(byId.get(id)?.props.get('parent'))?.value ?? '';
  // The datacenter above an object, and its inventory path (folders above it, root excluded).
  const datacenterOf = (id: string): string => {
    let cur = id;
    for (let i = 0; cur && i < 64; i++, cur = parent(cur)) {
      if (byId.get(cur)?.obj.type !== 'Datacenter') continue;
      const path = [name(cur)];
      for (let p = parent(cur); p && parent(p); p = parent(p)) path.unshift(name(p));
      return path.join('/');
    }
    return '';
  };
  const ofType = (...types: string[]): ObjectContent[] => objects.filter((o) => types.includes(o.obj.type));
  const datastores = ofType('Datastore').map((o) => ({
    id: o.obj.value,
    name: text(o.props.get('name')),
    capacity: num(o.props.get('summary.capacity')),
    free: num(o.props.get('summary.freeSpace')),
    type: text(o.props.get('summary.type')),
    datacenter: datacenterOf(o.obj.value),
  }));
  const datastoreByName = new Map(datastores.map((d) => [d.name, d.id]));
  const vms: VsphereVm[] = ofType('VirtualMachine')
    .filter((o) => text(o.props.get('config.template')) !== 'true')
    .map((o) => {
      const p = (k: string) => o.props.get(k);
      const { disks, nics, unsupported } = parseDevices(p('config.hardware.device'), datastoreByName);
      const cpus = num(p('config.hardware.numCPU'));
      return {
        id: o.obj.value,
        ovfId: o.obj.value,
        name: text(p('name')),
        source: disks[0]?.datastore ?? '',
        osType: text(p('config.guestId')),
        cpus,
        coresPerSocket: num(p('config.hardware.numCoresPerSocket')) || cpus,
        memoryMB: num(p('config.hardware.memoryMB')),
        firmware: text(p('config.firmware')) || 'bios',
        disks,
        nics,
        uuid: text(p('config.uuid')),
        powerState: text(p('runtime.powerState')),
        snapshots: snapshotNames(p('snapshot')),
        changeTrackingEnabled: text(p('config.changeTrackingEnabled')) === 'true',
        template: false,
        host: moOf(p('runtime.host'))?.value ?? '',
        datacenter: datacenterOf(o.obj.value),
        unsupported,
      };
    })
    .sort((a, b) => a.name.localeCompare(b.name));
  const named = (o: ObjectContent) => ({ id: o.obj.value, name: text(o.props.get('name')) });
  return {
    vms,
    // Networks of both kinds (standard and distributed port groups; a DVS uplink group is one too).
    networks: ofType('Network', 'DistributedVirtualPortgroup', 'OpaqueNetwork').map(named),
    datastores,
    hosts: ofType('HostSystem').map((o) => ({ ...named(o), cluster: parent(o.obj.value) })),
    datacenters: ofType('Datacenter').map((o) => ({ ...named(o), path: datacenterOf(o.obj.value) })),
    clusters: ofType('ClusterComputeResource').map(named),
    folders: ofType('Folder').map((o) => ({ ...named(o), parent: parent(o.obj.value) })),
    errors: [],
  };
}

export async function readVsphereInventory(client: VsphereClient): Promise<Inventory> {
  return buildInventory(await client.retrieveAll(INVENTORY_PATHS));
}
