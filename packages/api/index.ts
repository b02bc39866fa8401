/**
 * @vessel/api: the catalogue of kinds Vessel serves, their upstream schemas, validation,
 * defaulting and the OpenAPI documents. Pure functions and data; no I/O beyond reading the
 * bundled schema files once.
 */
export type { Conversion, FieldCause, KindInfo, KubeObject, ObjectMeta, OwnerReference, PrinterColumn, ValidationResult } from './types.ts';
export { apiVersionOf, findByKind, findByResource, groupVersions, kinds, kindsInCategory, resolveName, schemaNameFor } from './kinds.ts';
export { convertTo, convertToStorage, servedKinds, storageVersionOf } from './kinds.ts';
export { validateObject, type FieldValidation, type ValidateOptions } from './validate.ts';
export { applyDefaults, applyVmiSpecDefaults, defaultDiskBus, firmwareUUID, uuidV5 } from './defaults.ts';
export { openApiV2, openApiV3, openApiV3Hash, openApiV3Index, openApiV3Path, type OpenApiDocument } from './openapi.ts';
export { parseQuantity, tryParseQuantity } from './quantity.ts';
export { Reason, invalidObjectMessage } from './errors.ts';
export { newEvent, type EventType } from './events.ts';
export {
  SUPPORTED_FIELDS,
  DV_SPEC_SUPPORTED,
  VMI_SPEC_FIELDS,
  SUPPORTED_ARCHITECTURES,
  SUPPORTED_DISK_BUSES,
  SUPPORTED_MACHINE_TYPES,
  qemuMachineType,
  supportedValues,
  MIN_GUEST_MEMORY,
  firmwareUuidProblem,
  macAddressProblem,
  blockSizeProblem,
  parseVmNetworkCidr,
  VM_NETWORK_CIDR_PROBLEM,
  unsupportedVmiSpecFields,
  vmiSpecFieldPatterns,
  type FieldSupport,
  type SupportedValue,
} from './support.ts';
export { upstreamSchemas, type JsonSchema, type Json, type JsonObject } from './schemas.ts';
export * as storage from './storage.ts';
export { embeddedMetadata, isReservedKey, withoutReserved, RESERVED_PREFIX, type EmbeddedMeta } from './reserved.ts';
export * as snapshots from './snapshots.ts';
export * as refs from './refs.ts';
export {
  isObject,
  annotationsOf,
  phaseOf,
  runStrategyOf,
  claimVolumes,
  claimNames,
  NODE_UNRESPONSIVE,
  RESUME_MEMORY,
  CLONE_DISK_TYPE,
  type RunStrategy,
  type ClaimVolume,
} from './objects.ts';
export * as ipam from './ipam.ts';
export * as netpol from './netpol.ts';
export * as presets from './presets.ts';
export { PRESET_DEPRECATION } from './kinds/replicas.ts';
export * as nmstate from './nmstate.ts';
export * as nad from './nad.ts';
export * as migration from './migration.ts';
export * as forklift from './forklift.ts';
export * as migrationConfig from './migration-config.ts';
export * as priority from './priority.ts';
export * as instancetypes from './instancetype.ts';
export { commonClusterInstancetypes, commonClusterPreferences, commonInstancetypeSizes, type InstancetypeSize } from './common-instancetypes.ts';
export { parseIPv4, formatIPv4, parseCidr, isHostOf, macForIPv4, firstFree, CIDR_PROBLEM, DEFAULT_SERVICE_CIDR, NODE_PORT_RANGE, type Cidr } from './ip.ts';
export { pvcResizeRefusal, PVC_RESIZE_NOT_ALLOWED } from './kinds/core.ts';
export type { DataVolumePhase, PopulationSource } from './storage.ts';
export { parseCron, nextTick, cronProblem, type CronSchedule } from './cron.ts';
export { IMAGE_DIGEST_RE, ImageUrlError, parseImageUrl, type ImageRef } from './image-url.ts';
export * as vmexport from './kinds/export.ts';
export * as ova from './ova.ts';
