/** What the API server needs to know about each kind it serves. */

export interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean' | 'date';
  /** Simple JSONPath like ".status.printableStatus" or ".metadata.creationTimestamp". */
  jsonPath: string;
  description?: string;
  /** 0 = always shown; >0 = only with -o wide. */
  priority?: number;
  /**
   * The cell is the number of entries of the array/map at jsonPath rather than its value
   * (kubectl's DATA column for Secrets and ConfigMaps; a JSONPath cannot count).
   */
  count?: boolean;
}

export interface KindInfo {
  group: string; // '' for the core group
  version: string;
  kind: string;
  listKind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  categories: string[];
  namespaced: boolean;
  /** Has a `status` subresource: the main resource ignores status changes and vice versa. */
  statusSubresource: boolean;
  printerColumns: PrinterColumn[];
  /** Has a `scale` subresource (autoscaling/v1 Scale over spec.replicas, status.replicas and status.labelSelector). */
  scaleSubresource?: boolean;
  /** Extra subresources served for this kind besides status (e.g. KubeVirt's start/stop), later. */
  verbs: string[];
}

/** One problem with a submitted object, in Kubernetes' StatusCause shape. */
export interface FieldCause {
  /** FieldValueRequired | FieldValueInvalid | FieldValueNotSupported | FieldValueDuplicate | FieldValueTooLong | FieldValueForbidden */
  reason: string;
  /** Dotted path with [i] indexes, e.g. "spec.template.spec.domain.devices.disks[0].name". */
  field: string;
  message: string;
}

export interface ValidationResult {
  causes: FieldCause[];
  /** Human-readable warnings (returned in `Warning: 299 - "..."` headers). */
  warnings: string[];
}

/** A Kubernetes object as JSON (loosely typed: validation is what gives it shape). */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: ObjectMeta;
  [field: string]: unknown;
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  deletionGracePeriodSeconds?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
  ownerReferences?: OwnerReference[];
  managedFields?: unknown[];
  [field: string]: unknown;
}
