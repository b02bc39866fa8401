/**
 * The ids and names QEMU objects get from the argv builder. They live apart from the builder
 * because the agent's QMP callers (hotplug, snapshots, volumes, the guest agent client) address
 * the same devices, block nodes and chardevs later, and must agree with the argv byte for byte.
 */
import { createHash } from 'node:crypto';

/** Chardev id of the serial console (ttyS0), defined by the process layer. */
export const SERIAL_CHARDEV_ID = 'serial0';
/** Chardev id of the guest agent channel (org.qemu.guest_agent.0), defined by the process layer. */
export const GUEST_AGENT_CHARDEV_ID = 'qga0';

/** Device id of the virtio-scsi controller every VM has (unless disableHotplug); hotplugged disks go on its bus `scsi0.0`. */
export const SCSI_CONTROLLER_ID = 'scsi0';

const shortHash = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 8);

/** QEMU device id of a disk, interface, input or watchdog: KubeVirt's user alias. */
export const deviceId = (name: string): string => `ua-${name}`;

/**
 * Block node names of a disk: the protocol (file) node and the format node the device uses.
 * QEMU caps node names at 31 characters, so long disk names are cut and given a hash suffix.
 */
export function blockNodeNames(diskName: string): { file: string; format: string } {
  const base = diskName.length <= 26 ? diskName : `${diskName.slice(0, 17)}-${shortHash(diskName)}`;
  return { file: `file-${base}`, format: `disk-${base}` };
}

/** Netdev id of an interface. */
export const netdevId = (ifaceName: string): string => `net-${ifaceName}`;

/** The MAC an interface gets without spec.macAddress: stable per namespace/VM/interface. */
export function derivedMac(namespace: string, vmName: string, ifaceName: string): string {
  const h = createHash('sha256').update(`${namespace}/${vmName}/${ifaceName}`).digest();
  return ['52', '54', '00', h[0], h[1], h[2]].map((b) => (typeof b === 'number' ? b.toString(16).padStart(2, '0') : b)).join(':');
}
