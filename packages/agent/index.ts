/**
 * @vessel/agent: the node agent (`vessel agent`): Node registration, the storage pools and
 * volume manager, its HTTPS endpoint, and the storage data plane (qemu-img, importers).
 */
export { startAgent, type AgentOptions, type RunningAgent } from './agent.ts';
export { DEFAULT_SYSTEM_RESERVED, parseSystemReserved, type SystemReserved } from './node.ts';
export { DEFAULT_QEMU_PRIORITY, NO_QEMU_PRIORITY, parseQemuPriority, type QemuPriority } from './qemu/priority.ts';
export { Pool, backingFile } from './storage/pools.ts';
export { VolumeManager } from './storage/volumes.ts';
export * from './storage/errors.ts';
export * as qemuImg from './storage/qemu-img.ts';
export type { DiskFormat, ImageInfo } from './storage/qemu-img.ts';
export * from './storage/import.ts';
export {
  createDevCluster,
  deleteNetns,
  runInNode,
  fabricAddress,
  DEFAULT_FABRIC_CIDR,
  type DevCluster,
  type DevClusterOptions,
  type DevNode,
} from './network/devcluster.ts';
export { ClusterNetwork, FABRIC_IP_ANNOTATION, IPADDRESSES, type ClusterNic } from './network/cluster.ts';
export { NetworkError, type NetworkErrorCode } from './network/errors.ts';
export { GUEST_IP, podNetnsName } from './network/pod.ts';
