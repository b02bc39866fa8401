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
  /**
   * Every version the kind is served at (a CRD's served versions), `version`, the storage version,
   * among them; absent: `version` alone. Each is a KindInfo of its own (kinds.ts servedKinds).
   */
  servedVersions?: string[];
  /** On the KindInfo of a served version that is not the storage one: the version objects are stored at. */
  storageVersion?: string;
  /**
   * Converts an object of this kind between served versions ('v1alpha1' → 'v1beta1'); the result
   * has apiVersion set by the caller. Absent: the object unchanged (a CRD's conversion strategy None).
   */
  convert?: Conversion;
}

/** A kind's conversion between two of its served versions; must not change `obj`. */
export type Conversion = (obj: KubeObject, from: string, to: string) => KubeObject;

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
