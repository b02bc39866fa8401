/**
 * @vessel/agent: the node agent's libraries. For now the storage data plane (qemu-img
 * wrapper and disk importer) that the DataVolume controller will call.
 */
export * from './storage/errors.ts';
export * as qemuImg from './storage/qemu-img.ts';
export type { DiskFormat, ImageInfo } from './storage/qemu-img.ts';
export * from './storage/import.ts';
