/**
 * validateObject: what the API server runs on every write. Three layers:
 *  1. structural, against the upstream OpenAPI schema (unknown fields, JSON types, required fields,
 *     enums, quantity syntax), with Kubernetes-style field paths ("spec.template.spec.domain.devices.disks[0].name");
 *  2. metadata (name per the kind's rule, labels, annotations);
 *  3. kind semantics (kinds/*.ts), following the upstream webhooks.
 * The structural walk also splits "upstream has it" from "Vessel implements it" (support.ts): the
 * former is accepted with a warning, except in VMI specs, where kinds/kubevirt.ts refuses it.
 * Schemas are compiled once; the walk allocates little.
 */
import { invalid, notSupported, required } from './errors.ts';
import { apiVersionOf, schemaNameFor } from './kinds.ts';
import { validateDataImportCron, validateDataSource, validateDataVolume } from './kinds/cdi.ts';
import { validateVirtualMachineClone } from './kinds/clone.ts';
import { validateVirtualMachineExport } from './kinds/export.ts';
import { validateEndpointSlice, validateIPAddress, validateNetworkAttachmentDefinition, validateNetworkPolicy } from './kinds/network.ts';
import { validateConfigMap, validatePersistentVolumeClaim, validateSecret, validateService, validateStorageClass } from './kinds/core.ts';
import { validateNodeNetworkConfigurationPolicy } from './kinds/nmstate.ts';
import { validateForkliftMigration, validateHook, validateNetworkMap, validatePlan, validateProvider, validateStorageMap } from './kinds/forklift.ts';
import { validateMigration, validateVirtualMachine, validateVirtualMachineInstance } from './kinds/kubevirt.ts';
import { validateKubeVirt, validateMigrationPolicy } from './migration-config.ts';
import { validateVirtualMachineInstancePreset, validateVirtualMachineInstanceReplicaSet, validateVirtualMachinePool } from './kinds/replicas.ts';
import { validatePriorityClass } from './priority.ts';
import { validateInstancetype, validatePreference } from './instancetype.ts';
import { validateVirtualMachineRestore, validateVirtualMachineSnapshot, validateVirtualMachineSnapshotContent } from './kinds/snapshot.ts';
import type { SemanticContext, SemanticValidator } from './kinds/util.ts';
import { validateObjectMeta } from './meta.ts';
import type { NameRule } from './names.ts';
import { QUANTITY_FORMAT_MESSAGE, tryParseQuantity } from './quantity.ts';
import { compiledSchema, type ObjectNode, type SchemaNode } from './schemas.ts';
import { notImplementedWarning, supportTrieFor, type SupportTrie } from './support.ts';
import type { FieldCause, KindInfo, KubeObject, ValidationResult } from './types.ts';

/** Kubernetes' fieldValidation query parameter: what to do with fields the schema does not know. */
export type FieldValidation = 'Strict' | 'Warn' | 'Ignore';

export interface ValidateOptions {
  /**
   * Strict (default, kubectl's default too): unknown fields are errors.
   * Warn: they become warnings `unknown field "spec.foo"`. Ignore: nothing is reported.
   */
  fieldValidation?: FieldValidation;
  /** With Warn/Ignore, also delete unknown fields from `obj` (Kubernetes drops them before storing). */
  pruneUnknown?: boolean;
  /**
   * The write targets the status subresource. On the main resource of a kind with a status
   * subresource, `status` is not validated (the server keeps the stored status anyway).
   */
  subresource?: 'status';
}

/** Name rules per kind (kube-apiserver's ValidateXName; CRDs use DNS-1123 subdomains). */
const NAME_RULES: Record<string, NameRule> = {
  '/Namespace': 'dns1123-label',
  '/Service': 'dns1035-label',
};

const SEMANTIC: Record<string, SemanticValidator> = {
  'kubevirt.io/VirtualMachine': validateVirtualMachine,
  'kubevirt.io/VirtualMachineInstance': validateVirtualMachineInstance,
  'kubevirt.io/VirtualMachineInstanceMigration': validateMigration,
  'kubevirt.io/KubeVirt': validateKubeVirt,
  'kubevirt.io/VirtualMachineInstanceReplicaSet': validateVirtualMachineInstanceReplicaSet,
  'kubevirt.io/VirtualMachineInstancePreset': validateVirtualMachineInstancePreset,
  'pool.kubevirt.io/VirtualMachinePool': validateVirtualMachinePool,
  'migrations.kubevirt.io/MigrationPolicy': validateMigrationPolicy,
  'instancetype.kubevirt.io/VirtualMachineInstancetype': validateInstancetype,
  'instancetype.kubevirt.io/VirtualMachineClusterInstancetype': validateInstancetype,
  'instancetype.kubevirt.io/VirtualMachinePreference': validatePreference,
  'instancetype.kubevirt.io/VirtualMachineClusterPreference': validatePreference,
  'cdi.kubevirt.io/DataVolume': validateDataVolume,
  'cdi.kubevirt.io/DataSource': validateDataSource,
  'cdi.kubevirt.io/DataImportCron': validateDataImportCron,
  'snapshot.kubevirt.io/VirtualMachineSnapshot': validateVirtualMachineSnapshot,
  'snapshot.kubevirt.io/VirtualMachineSnapshotContent': validateVirtualMachineSnapshotContent,
  'snapshot.kubevirt.io/VirtualMachineRestore': validateVirtualMachineRestore,
  'clone.kubevirt.io/VirtualMachineClone': validateVirtualMachineClone,
  'export.kubevirt.io/VirtualMachineExport': validateVirtualMachineExport,
  '/Service': validateService,
  '/PersistentVolumeClaim': validatePersistentVolumeClaim,
  '/Secret': validateSecret,
  '/ConfigMap': validateConfigMap,
  'storage.k8s.io/StorageClass': validateStorageClass,
  'networking.k8s.io/IPAddress': validateIPAddress,
  'networking.k8s.io/NetworkPolicy': validateNetworkPolicy,
  'discovery.k8s.io/EndpointSlice': validateEndpointSlice,
  'scheduling.k8s.io/PriorityClass': validatePriorityClass,
  'nmstate.io/NodeNetworkConfigurationPolicy': validateNodeNetworkConfigurationPolicy,
  'k8s.cni.cncf.io/NetworkAttachmentDefinition': validateNetworkAttachmentDefinition,
  'forklift.konveyor.io/Provider': validateProvider,
  'forklift.konveyor.io/NetworkMap': validateNetworkMap,
  'forklift.konveyor.io/StorageMap': validateStorageMap,
  'forklift.konveyor.io/Plan': validatePlan,
  'forklift.konveyor.io/Migration': validateForkliftMigration,
  'forklift.konveyor.io/Hook': validateHook,
};

/** Covers a whole subtree: no warnings below. */
const ALL: SupportTrie = { all: true, children: new Map() };

interface WalkContext {
  causes: FieldCause[];
  warnings: string[];
  fieldValidation: FieldValidation;
  prune: Array<[Record<string, unknown>, string]> | null;
  /**
   * Map keys in paths: built-in kinds use Kubernetes' fldPath.Key form ("resources.requests[memory]"),
   * custom resources (KubeVirt, CDI) the CRD/webhook form ("resources.requests.memory").
   */
  dotKeys: boolean;
  /** Paths of unknown fields, so the kind semantics do not report them a second time. */
  unknown: Set<string>;
}

function jsonType(v: unknown): string {
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function typeError(ctx: WalkContext, path: string, v: unknown, expected: string): void {
  const actual = jsonType(v);
  ctx.causes.push(invalid(path, actual, `${path} in body must be of type ${expected}: ${JSON.stringify(actual)}`));
}

function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

function isEmpty(v: unknown): boolean {
  return v === null || v === undefined || (Array.isArray(v) && v.length === 0);
}

/**
 * Walks `v` against `node`. `sup` is the implemented-fields trie at this point: ALL (or a node with
 * all=true) means everything below is implemented, null means warnings are off (already warned
 * higher up, or status).
 */
function walk(node: SchemaNode, v: unknown, path: string, sup: SupportTrie | null, ctx: WalkContext): void {
  // Kubernetes treats null as "unset" for optional fields.
  if (v === null || v === undefined) return;
  switch (node.t) {
    case 'any':
      return;
    case 'string':
      if (typeof v !== 'string') typeError(ctx, path, v, 'string');
      else if (node.enum && !node.enum.has(v)) ctx.causes.push(notSupported(path, v, node.enumList ?? []));
      else if (node.format === 'date-time' && Number.isNaN(Date.parse(v))) {
        ctx.causes.push(invalid(path, v, 'must be an RFC 3339 date-time, e.g. "2024-01-02T15:04:05Z"'));
      }
      return;
    case 'integer':
      if (typeof v !== 'number' || !Number.isInteger(v)) typeError(ctx, path, v, 'integer');
      return;
    case 'number':
      if (typeof v !== 'number') typeError(ctx, path, v, 'number');
      return;
    case 'boolean':
      if (typeof v !== 'boolean') typeError(ctx, path, v, 'boolean');
      return;
    case 'quantity':
      if (typeof v === 'number') return;
      if (typeof v !== 'string') typeError(ctx, path, v, 'string or number (a quantity like "64Mi")');
      else if (tryParseQuantity(v) === undefined) ctx.causes.push(invalid(path, v, `${QUANTITY_FORMAT_MESSAGE} (e.g. "512Mi", "2Gi", "500m", "1")`));
      return;
    case 'intOrString':
      if (typeof v === 'string') return;
      if (typeof v !== 'number' || !Number.isInteger(v)) typeError(ctx, path, v, 'integer or string');
      return;
    case 'array':
      if (!Array.isArray(v)) {
        typeError(ctx, path, v, 'array');
        return;
      }
      for (let i = 0; i < v.length; i++) walk(node.items, v[i], `${path}[${i}]`, sup, ctx);
      return;
    case 'object':
      if (typeof v !== 'object' || Array.isArray(v)) {
        typeError(ctx, path, v, 'object');
        return;
      }
      walkObject(node, v as Record<string, unknown>, path, sup, ctx);
      return;
  }
}

function walkObject(node: ObjectNode, o: Record<string, unknown>, path: string, sup: SupportTrie | null, ctx: WalkContext): void {
  if (node.preserve) return;
  if (node.additional) {
    // A map: keys are data, not fields.
    for (const k in o) walk(node.additional, o[k], ctx.dotKeys ? `${path}.${k}` : `${path}[${k}]`, sup, ctx);
    return;
  }
  const props = node.props;
  for (const k in o) {
    const child = props[k];
    const p = join(path, k);
    if (child === undefined) {
      unknownField(ctx, o, k, p);
      continue;
    }
    let childSup: SupportTrie | null = null;
    if (sup !== null) {
      if (sup.all) childSup = sup;
      else {
        const next = sup.children.get(k);
        if (next) childSup = next.all ? ALL : next;
        else if (!isEmpty(o[k])) ctx.warnings.push(notImplementedWarning(p));
      }
    }
    walk(child, o[k], p, childSup, ctx);
  }
  const req = node.required;
  for (let i = 0; i < req.length; i++) {
    const r = req[i];
    if (o[r] === undefined || o[r] === null) ctx.causes.push(required(join(path, r)));
  }
}

function unknownField(ctx: WalkContext, o: Record<string, unknown>, key: string, path: string): void {
  ctx.unknown.add(path);
  switch (ctx.fieldValidation) {
    case 'Strict':
      ctx.causes.push({
        reason: 'FieldValueInvalid',
        field: path,
        message: `unknown field "${path}": it is not part of the upstream API; check its spelling and indentation`,
      });
      return;
    case 'Warn':
      ctx.warnings.push(`unknown field "${path}"`);
      break;
    case 'Ignore':
      break;
  }
  if (ctx.prune) ctx.prune.push([o, key]);
}

/**
 * Validates an object for `op` on the kind `info`; `old` is the stored object on updates.
 * Never throws for bad input: every problem is a cause (422 Invalid) or a warning (299 header).
 */
export function validateObject(info: KindInfo, obj: KubeObject, op: 'create' | 'update', old?: KubeObject, opts: ValidateOptions = {}): ValidationResult {
  const causes: FieldCause[] = [];
  const warnings: string[] = [];
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
    return { causes: [invalid('', jsonType(obj), 'the request body must be a JSON object')], warnings };
  }
  const fieldValidation = opts.fieldValidation ?? 'Strict';
  const wctx: WalkContext = {
    causes,
    warnings,
    fieldValidation,
    prune: opts.pruneUnknown && fieldValidation !== 'Strict' ? [] : null,
    dotKeys: info.group !== '' && !info.group.endsWith('.k8s.io'),
    unknown: new Set(),
  };

  const apiVersion = apiVersionOf(info);
  if (obj.apiVersion === undefined || obj.apiVersion === '') causes.push(required('apiVersion', `set apiVersion: ${apiVersion}`));
  else if (obj.apiVersion !== apiVersion) causes.push(invalid('apiVersion', obj.apiVersion, `must be ${JSON.stringify(apiVersion)} for kind ${info.kind}`));
  if (obj.kind === undefined || obj.kind === '') causes.push(required('kind', `set kind: ${info.kind}`));
  else if (obj.kind !== info.kind) causes.push(invalid('kind', obj.kind, `must be ${JSON.stringify(info.kind)} for ${info.plural}`));

  // Structural walk of the top level, handling status specially.
  const root = compiledSchema(schemaNameFor(info));
  if (root.t !== 'object') throw new Error(`schema of ${info.kind} is not an object`);
  const trie = supportTrieFor(info.group, info.kind);
  const skipStatus = info.statusSubresource && opts.subresource !== 'status';
  const topSup = trie ?? ALL;
  for (const k in obj) {
    if (k === 'apiVersion' || k === 'kind') continue;
    const child = root.props[k];
    if (child === undefined) {
      unknownField(wctx, obj, k, k);
      continue;
    }
    if (k === 'status') {
      if (!skipStatus) walk(child, obj[k], k, null, wctx);
      continue;
    }
    let sup: SupportTrie | null = null;
    const next = topSup.all ? ALL : topSup.children.get(k);
    if (next) sup = next.all ? ALL : next;
    else if (!isEmpty(obj[k])) warnings.push(notImplementedWarning(k));
    walk(child, obj[k], k, sup, wctx);
  }
  for (const r of root.required) {
    if (r === 'status' || r === 'metadata') continue;
    if (obj[r] === undefined || obj[r] === null) causes.push(required(r));
  }

  validateObjectMeta(
    obj.metadata,
    'metadata',
    {
      nameRule: NAME_RULES[`${info.group}/${info.kind}`] ?? 'dns1123-subdomain',
      requireName: true,
      old: old?.metadata as Record<string, unknown> | undefined,
    },
    causes,
  );

  const semantic = SEMANTIC[`${info.group}/${info.kind}`];
  if (semantic) {
    const sctx: SemanticContext = { op, old, causes, warnings, unknownFields: wctx.unknown };
    semantic(obj, sctx);
  }

  if (wctx.prune) for (const [o, k] of wctx.prune) delete o[k];
  return { causes, warnings };
}
