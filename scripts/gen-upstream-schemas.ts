/**
 * Generates packages/api/upstream/*.json: OpenAPI v3 component schemas for the kinds Vessel serves,
 * derived from the TypeScript declarations of @kubevirt-ui-ext/kubevirt-api (which are themselves
 * generated from the upstream KubeVirt, CDI and Kubernetes OpenAPI documents).
 *
 * Why from .d.ts: it is the only machine-readable copy of the upstream API we have offline, pinned
 * by package-lock. The generator lost some information on the way (integer formats, field
 * descriptions of $ref'd fields, Quantity/IntOrString types, patch strategies); this script puts
 * back what can be recovered (see the tables below) and says so in comments.
 *
 * Run: node --import tsx scripts/gen-upstream-schemas.ts   (writes the files)
 * The golden test packages/api/upstream/upstream.test.ts calls generateUpstreamSchemas() and
 * compares with the committed files, so regenerating is the only way they change.
 */
import ts from 'typescript';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type JsonSchema = { [k: string]: Json };

type SourceId = 'kubernetes' | 'kubevirt' | 'cdi';

const DIST_DIRS: Record<SourceId, string> = {
  kubernetes: 'kubernetes',
  kubevirt: 'kubevirt',
  cdi: 'containerized-data-importer',
};

/** Root types per output file; everything reachable from them is emitted. */
const ROOTS: Array<[SourceId, string]> = [
  ...['Namespace', 'Secret', 'ConfigMap', 'Event', 'Node', 'Service', 'PersistentVolumeClaim'].flatMap((k): Array<[SourceId, string]> => [
    ['kubernetes', `IoK8sApiCoreV1${k}`],
    ['kubernetes', `IoK8sApiCoreV1${k}List`],
  ]),
  ['kubernetes', 'IoK8sApiStorageV1StorageClass'],
  ['kubernetes', 'IoK8sApiStorageV1StorageClassList'],
  // The cluster network: address allocations, the endpoints of Services, network policies.
  ['kubernetes', 'IoK8sApiNetworkingV1IPAddress'],
  ['kubernetes', 'IoK8sApiNetworkingV1IPAddressList'],
  ['kubernetes', 'IoK8sApiNetworkingV1NetworkPolicy'],
  ['kubernetes', 'IoK8sApiNetworkingV1NetworkPolicyList'],
  ['kubernetes', 'IoK8sApiDiscoveryV1EndpointSlice'],
  ['kubernetes', 'IoK8sApiDiscoveryV1EndpointSliceList'],
  // Served alongside every group: error bodies, delete options, watch events.
  ['kubernetes', 'IoK8sApimachineryPkgApisMetaV1Status'],
  ['kubernetes', 'IoK8sApimachineryPkgApisMetaV1DeleteOptions'],
  ['kubernetes', 'IoK8sApimachineryPkgApisMetaV1WatchEvent'],
  ...['VirtualMachine', 'VirtualMachineInstance', 'VirtualMachineInstanceMigration'].flatMap((k): Array<[SourceId, string]> => [
    ['kubevirt', `V1${k}`],
    ['kubevirt', `V1${k}List`],
  ]),
  // The cluster's KubeVirt configuration and migrations.kubevirt.io/v1alpha1 MigrationPolicy.
  ['kubevirt', 'V1KubeVirt'],
  ['kubevirt', 'V1KubeVirtList'],
  ['kubevirt', 'V1alpha1MigrationPolicy'],
  ['kubevirt', 'V1alpha1MigrationPolicyList'],
  ...['DataVolume', 'DataSource', 'DataImportCron'].flatMap((k): Array<[SourceId, string]> => [
    ['cdi', `V1beta1${k}`],
    ['cdi', `V1beta1${k}List`],
  ]),
  // Replica sets and presets of VMIs (kubevirt.io/v1), pool.kubevirt.io/v1alpha1 pools, and the autoscaling/v1 Scale of their scale subresource.
  ...['VirtualMachineInstanceReplicaSet', 'VirtualMachineInstancePreset'].flatMap((k): Array<[SourceId, string]> => [
    ['kubevirt', `V1${k}`],
    ['kubevirt', `V1${k}List`],
  ]),
  ['kubevirt', 'V1alpha1VirtualMachinePool'],
  ['kubevirt', 'V1alpha1VirtualMachinePoolList'],
  // pool.kubevirt.io/v1beta1, served next to v1alpha1 (docs/api-versions.md).
  ['kubevirt', 'V1beta1VirtualMachinePool'],
  ['kubevirt', 'V1beta1VirtualMachinePoolList'],
  ['kubernetes', 'IoK8sApiAutoscalingV1Scale'],
  // snapshot.kubevirt.io/v1beta1 and clone.kubevirt.io/v1beta1 (KubeVirt's dist, emitted into kubevirt.json).
  ...['VirtualMachineSnapshot', 'VirtualMachineSnapshotContent', 'VirtualMachineRestore', 'VirtualMachineClone'].flatMap((k): Array<[SourceId, string]> => [
    ['kubevirt', `V1beta1${k}`],
    ['kubevirt', `V1beta1${k}List`],
  ]),
  // export.kubevirt.io/v1beta1 (KubeVirt's dist, emitted into kubevirt.json).
  ['kubevirt', 'V1beta1VirtualMachineExport'],
  ['kubevirt', 'V1beta1VirtualMachineExportList'],
];

/**
 * KubeVirt's dist names every v1beta1 type `V1beta1*` whatever its API group; these are the types of
 * snapshot.kubevirt.io (kubevirt.io/api/snapshot/v1beta1) and clone.kubevirt.io
 * (kubevirt.io/api/clone/v1beta1), named as kube-apiserver names CRD schemas (reversed group:
 * io.kubevirt.snapshot.v1beta1.VirtualMachineSnapshot). Upstream the clone group has its own
 * Condition type, identical in shape to snapshot's; the .d.ts has only one V1beta1Condition, so
 * clone status refers to io.kubevirt.snapshot.v1beta1.Condition.
 */
const V1BETA1_GROUP: Record<string, 'snapshot' | 'clone' | 'pool' | 'export'> = {
  ...Object.fromEntries(
    [
      'VirtualMachineSnapshot',
      'VirtualMachineSnapshotList',
      'VirtualMachineSnapshotSpec',
      'VirtualMachineSnapshotStatus',
      'VirtualMachineSnapshotContent',
      'VirtualMachineSnapshotContentList',
      'VirtualMachineSnapshotContentSpec',
      'VirtualMachineSnapshotContentStatus',
      'VirtualMachineRestore',
      'VirtualMachineRestoreList',
      'VirtualMachineRestoreSpec',
      'VirtualMachineRestoreStatus',
      'Condition',
      'Error',
      'SnapshotVolumesLists',
      'SourceIndication',
      'SourceSpec',
      'VirtualMachine',
      'PersistentVolumeClaim',
      'VolumeBackup',
      'VolumeSnapshotStatus',
      'VolumeRestore',
      'VolumeRestoreOverride',
    ].map((n) => [n, 'snapshot' as const]),
  ),
  ...Object.fromEntries(
    ['VirtualMachineClone', 'VirtualMachineCloneList', 'VirtualMachineCloneSpec', 'VirtualMachineCloneStatus', 'VirtualMachineCloneTemplateFilters'].map(
      (n) => [n, 'clone' as const],
    ),
  ),
  // pool.kubevirt.io/v1beta1 (kubevirt.io/api/pool/v1beta1).
  ...Object.fromEntries(
    [
      'VirtualMachinePool',
      'VirtualMachinePoolList',
      'VirtualMachinePoolSpec',
      'VirtualMachinePoolStatus',
      'VirtualMachinePoolCondition',
      'VirtualMachinePoolAutohealingStrategy',
      'VirtualMachinePoolNameGeneration',
      'VirtualMachinePoolScaleInStrategy',
      'VirtualMachinePoolOpportunisticScaleInStrategy',
      'VirtualMachinePoolProactiveScaleInStrategy',
      'VirtualMachinePoolProactiveUpdateStrategy',
      'VirtualMachinePoolUpdateStrategy',
      'VirtualMachinePoolSelectionPolicy',
      'VirtualMachinePoolSelectors',
      'VirtualMachineTemplateSpec',
    ].map((n) => [n, 'pool' as const]),
  ),
  // export.kubevirt.io (kubevirt.io/api/export/v1beta1); its Condition is snapshot's shape and refers to it, like clone's.
  ...Object.fromEntries(
    [
      'VirtualMachineExport',
      'VirtualMachineExportList',
      'VirtualMachineExportSpec',
      'VirtualMachineExportStatus',
      'VirtualMachineExportLinks',
      'VirtualMachineExportLink',
      'VirtualMachineExportVolume',
      'VirtualMachineExportVolumeFormat',
      'VirtualMachineExportManifest',
      'VirtualMachineExportBackup',
      'VirtualMachineExportBackupEndpoint',
    ].map((n) => [n, 'export' as const]),
  ),
};

/** migrations.kubevirt.io/v1alpha1 types (KubeVirt's dist names them V1alpha1* like its other v1alpha1 types). */
const MIGRATIONS_V1ALPHA1 = new Set(
  ['MigrationPolicy', 'MigrationPolicyList', 'MigrationPolicySpec', 'MigrationPolicyStatus', 'Selectors'].map((n) => `V1alpha1${n}`),
);

/** pool.kubevirt.io/v1alpha1 types (named V1alpha1* in KubeVirt's dist like migrations.kubevirt.io's). */
const POOL_V1ALPHA1 = new Set(
  [
    'VirtualMachinePool',
    'VirtualMachinePoolList',
    'VirtualMachinePoolSpec',
    'VirtualMachinePoolStatus',
    'VirtualMachinePoolCondition',
    'VirtualMachinePoolNameGeneration',
    'VirtualMachinePoolScaleInStrategy',
    'VirtualMachinePoolProactiveScaleInStrategy',
    'VirtualMachinePoolSelectionPolicy',
    'VirtualMachineTemplateSpec',
  ].map((n) => `V1alpha1${n}`),
);

export const QUANTITY = 'io.k8s.apimachinery.pkg.api.resource.Quantity';
export const INT_OR_STRING = 'io.k8s.apimachinery.pkg.util.intstr.IntOrString';

/** The .d.ts inlines Quantity and IntOrString as `string` but keeps their type description. */
const QUANTITY_DESC_PREFIX = 'Quantity is a fixed-point representation of a number.';
const INT_OR_STRING_DESC_PREFIX = 'IntOrString is a type that can hold an int32 or a string.';

/**
 * Maps of Quantity (map[ResourceName]Quantity upstream) are `{[key: string]: string}` in the .d.ts
 * with no hint left; these are all such maps reachable from the served kinds (keyed by the type's
 * short name, e.g. ResourceRequirements for both io.k8s.api.core.v1 and io.kubevirt.v1).
 */
const QUANTITY_MAPS: Record<string, string[]> = {
  ResourceRequirements: ['limits', 'requests'],
  VolumeResourceRequirements: ['limits', 'requests'],
  NodeStatus: ['allocatable', 'capacity'],
  PersistentVolumeClaimStatus: ['allocatedResources', 'capacity'],
  PersistentVolumeClaimInfo: ['capacity', 'requests'],
};

/** Number fields that are floating point upstream; every other `number` is an integer in these APIs. */
const FLOAT_FIELDS = new Set(['qps', 'multipleOf', 'minimum', 'maximum']);

/**
 * Strategic-merge-patch metadata the .d.ts lost, for the fields of served core kinds that have it
 * upstream (kubectl computes client-side apply patches from it).
 */
const PATCH_META: Record<string, Record<string, JsonSchema>> = {
  'io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta': {
    finalizers: { 'x-kubernetes-patch-strategy': 'merge', 'x-kubernetes-list-type': 'set' },
    ownerReferences: {
      'x-kubernetes-patch-strategy': 'merge',
      'x-kubernetes-patch-merge-key': 'uid',
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['uid'],
    },
  },
  'io.k8s.api.core.v1.ServiceSpec': {
    ports: {
      'x-kubernetes-patch-strategy': 'merge',
      'x-kubernetes-patch-merge-key': 'port',
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['port', 'protocol'],
    },
    clusterIPs: { 'x-kubernetes-list-type': 'atomic' },
    ipFamilies: { 'x-kubernetes-list-type': 'atomic' },
  },
  'io.k8s.api.core.v1.ServiceStatus': {
    conditions: {
      'x-kubernetes-patch-strategy': 'merge',
      'x-kubernetes-patch-merge-key': 'type',
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['type'],
    },
  },
  'io.k8s.api.core.v1.NodeSpec': {
    podCIDRs: { 'x-kubernetes-patch-strategy': 'merge', 'x-kubernetes-list-type': 'set' },
  },
  'io.k8s.api.core.v1.NodeStatus': {
    addresses: {
      'x-kubernetes-patch-strategy': 'merge',
      'x-kubernetes-patch-merge-key': 'type',
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['type'],
    },
    conditions: {
      'x-kubernetes-patch-strategy': 'merge',
      'x-kubernetes-patch-merge-key': 'type',
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['type'],
    },
  },
  'io.k8s.api.core.v1.PersistentVolumeClaimStatus': {
    conditions: {
      'x-kubernetes-patch-strategy': 'merge',
      'x-kubernetes-patch-merge-key': 'type',
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['type'],
    },
  },
  'io.k8s.api.core.v1.NamespaceStatus': {
    conditions: {
      'x-kubernetes-patch-strategy': 'merge',
      'x-kubernetes-patch-merge-key': 'type',
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['type'],
    },
  },
};

/**
 * Fields KubeVirt's API has that the .d.ts dropped (KubeVirt's swagger types them as nullable
 * metav1.Time, which the TypeScript generator skips): condition timestamps.
 */
const TIME = (description: string): JsonSchema => ({ description, type: 'string', format: 'date-time', nullable: true });
const MISSING_FIELDS: Record<string, Record<string, JsonSchema>> = Object.fromEntries(
  [
    ...['VirtualMachineCondition', 'VirtualMachineInstanceCondition', 'VirtualMachineInstanceMigrationCondition'].map((k) => `io.kubevirt.v1.${k}`),
    'io.kubevirt.snapshot.v1beta1.Condition',
  ].map((k) => [
    k,
    {
      lastProbeTime: TIME('Last time the condition was checked.'),
      lastTransitionTime: TIME('Last time the condition transitioned from one status to another.'),
    },
  ]),
);

/** The `metadata` of top-level kinds has no description in the .d.ts; these are the upstream texts. */
const OBJECT_META_FIELD_DESC =
  "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_META_FIELD_DESC =
  'Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds';

interface Source {
  id: SourceId;
  interfaces: Map<string, ts.InterfaceDeclaration>;
  enums: Map<string, string[]>;
  /** interface name -> (TS property name -> JSON wire name), from the generated FromJSONTyped functions. */
  wire: Map<string, Map<string, string>>;
}

function loadSource(id: SourceId, pkgDir: string): Source {
  const dir = join(pkgDir, 'dist', DIST_DIRS[id]);
  const dts = ts.createSourceFile('index.d.ts', readFileSync(join(dir, 'index.d.ts'), 'utf8'), ts.ScriptTarget.Latest, true);
  const interfaces = new Map<string, ts.InterfaceDeclaration>();
  const enums = new Map<string, string[]>();
  for (const st of dts.statements) {
    if (ts.isInterfaceDeclaration(st)) interfaces.set(st.name.text, st);
    else if (ts.isEnumDeclaration(st)) {
      // CDI's generator writes `declare enum X { A = "A" }`, KubeVirt's a const object (below).
      const values = st.members.map((m) => (m.initializer && ts.isStringLiteral(m.initializer) ? m.initializer.text : m.name.getText()));
      enums.set(st.name.text, values);
    } else if (ts.isVariableStatement(st)) {
      for (const d of st.declarationList.declarations) {
        if (!ts.isIdentifier(d.name) || !d.name.text.endsWith('Enum') || !d.type || !ts.isTypeLiteralNode(d.type)) continue;
        const values: string[] = [];
        for (const m of d.type.members) {
          if (ts.isPropertySignature(m) && m.type && ts.isLiteralTypeNode(m.type) && ts.isStringLiteral(m.type.literal)) {
            values.push(m.type.literal.text);
          }
        }
        enums.set(d.name.text, values);
      }
    }
  }
  return { id, interfaces, enums, wire: loadWireNames(join(dir, 'index.js')) };
}

/**
 * The generated FromJSONTyped functions (minified) read each property from the wire object:
 * `{tsName: has(json,"wire") ? json.wire : undefined}` or `{tsName: json.wire}`. Reading them back
 * gives the TS-name -> wire-name mapping (e.g. `_continue` <- `continue`, `vSOCKCID` <- `VSOCKCID`).
 */
function loadWireNames(jsPath: string): Map<string, Map<string, string>> {
  const sf = ts.createSourceFile('index.js', readFileSync(jsPath, 'utf8'), ts.ScriptTarget.Latest, false, ts.ScriptKind.JS);
  const fns = new Map<string, ts.FunctionLikeDeclaration>();
  const exportsByLocal = new Map<string, string[]>();
  for (const st of sf.statements) {
    if (ts.isFunctionDeclaration(st) && st.name) fns.set(st.name.text, st);
    else if (ts.isVariableStatement(st)) {
      for (const d of st.declarationList.declarations) {
        if (ts.isIdentifier(d.name) && d.initializer && (ts.isFunctionExpression(d.initializer) || ts.isArrowFunction(d.initializer))) {
          fns.set(d.name.text, d.initializer);
        }
      }
    } else if (ts.isExportDeclaration(st) && st.exportClause && ts.isNamedExports(st.exportClause)) {
      for (const el of st.exportClause.elements) {
        const exported = el.name.text;
        if (!exported.endsWith('FromJSONTyped')) continue;
        const local = (el.propertyName ?? el.name).getText(sf);
        const list = exportsByLocal.get(local) ?? [];
        list.push(exported.slice(0, -'FromJSONTyped'.length));
        exportsByLocal.set(local, list);
      }
    }
  }
  const out = new Map<string, Map<string, string>>();
  for (const [local, names] of exportsByLocal) {
    const fn = fns.get(local);
    if (!fn || !fn.body) continue;
    const param = fn.parameters[0]?.name;
    if (!param || !ts.isIdentifier(param)) continue;
    const obj = findReturnedObject(fn.body);
    if (!obj) continue;
    const map = new Map<string, string>();
    for (const p of obj.properties) {
      if (!ts.isPropertyAssignment(p)) continue;
      const tsName = ts.isIdentifier(p.name) || ts.isStringLiteral(p.name) ? p.name.text : p.name.getText(sf);
      const wire = wireNameOf(p.initializer, param.text);
      if (wire !== undefined) map.set(tsName, wire);
    }
    for (const n of names) out.set(n, map);
  }
  return out;
}

function findReturnedObject(body: ts.Node): ts.ObjectLiteralExpression | undefined {
  let found: ts.ObjectLiteralExpression | undefined;
  const visit = (n: ts.Node): void => {
    if (found) return;
    if (ts.isObjectLiteralExpression(n)) {
      found = n;
      return;
    }
    ts.forEachChild(n, visit);
  };
  ts.forEachChild(body, visit);
  return found;
}

function wireNameOf(expr: ts.Expression, param: string): string | undefined {
  if (ts.isConditionalExpression(expr) && ts.isCallExpression(expr.condition)) {
    const arg = expr.condition.arguments[1];
    if (arg && ts.isStringLiteral(arg)) return arg.text;
  }
  let result: string | undefined;
  const visit = (n: ts.Node): void => {
    if (result !== undefined) return;
    if (ts.isPropertyAccessExpression(n) && ts.isIdentifier(n.expression) && n.expression.text === param) {
      result = n.name.text;
      return;
    }
    if (ts.isElementAccessExpression(n) && ts.isIdentifier(n.expression) && n.expression.text === param && ts.isStringLiteral(n.argumentExpression)) {
      result = n.argumentExpression.text;
      return;
    }
    ts.forEachChild(n, visit);
  };
  visit(expr);
  return result;
}

/** "IoK8sApiCoreV1Namespace" -> "io.k8s.api.core.v1.Namespace" (the upstream definition name). */
function dottedK8sName(tsName: string): string {
  const words = tsName.match(/[A-Z][a-z0-9]*/g) ?? [];
  const vi = words.findIndex((w) => /^V\d+((alpha|beta)\d+)?$/.test(w));
  if (vi < 0) throw new Error(`cannot derive a dotted name from ${tsName}`);
  return [...words.slice(0, vi).map((w) => w.toLowerCase()), words[vi].toLowerCase(), words.slice(vi + 1).join('')].join('.');
}

interface Resolved {
  source: Source;
  tsName: string;
  name: string;
  file: SourceId;
}

function descriptionOf(node: ts.Node): string {
  const docs = ts.getJSDocCommentsAndTags(node).filter(ts.isJSDoc);
  const text = docs
    .map((d) => ts.getTextOfJSDocComment(d.comment) ?? '')
    .join('\n')
    .trim();
  return text;
}

class Generator {
  readonly schemas: Record<SourceId, Record<string, JsonSchema>> = { kubernetes: {}, kubevirt: {}, cdi: {} };
  private readonly emitted = new Set<string>();
  private readonly queue: Resolved[] = [];
  constructor(private readonly sources: Record<SourceId, Source>) {}

  /** Picks the one canonical copy of a type: k8s types from the kubernetes dist, CDI types from the CDI dist. */
  resolve(source: Source, tsName: string): Resolved {
    const k8s = this.sources.kubernetes;
    const cdi = this.sources.cdi;
    if (source.id === 'kubernetes') return { source, tsName, name: dottedK8sName(tsName), file: 'kubernetes' };
    if (tsName.startsWith('K8sIo')) {
      const alt = 'IoK8s' + tsName.slice('K8sIo'.length);
      if (k8s.interfaces.has(alt)) return this.resolve(k8s, alt);
      return { source, tsName, name: dottedK8sName(alt), file: 'kubernetes' };
    }
    if (source.id === 'kubevirt') {
      const group = tsName.startsWith('V1beta1') ? V1BETA1_GROUP[tsName.slice(7)] : undefined;
      if (group) return { source, tsName, name: `io.kubevirt.${group}.v1beta1.${tsName.slice(7)}`, file: 'kubevirt' };
      if (tsName.startsWith('V1beta1') && cdi.interfaces.has(tsName)) return this.resolve(cdi, tsName);
      // KubeVirt's only v1alpha1 types served are migrations.kubevirt.io's and pool.kubevirt.io's.
      if (MIGRATIONS_V1ALPHA1.has(tsName)) return { source, tsName, name: `io.kubevirt.migrations.v1alpha1.${tsName.slice(8)}`, file: 'kubevirt' };
      if (POOL_V1ALPHA1.has(tsName)) return { source, tsName, name: `io.kubevirt.pool.v1alpha1.${tsName.slice(8)}`, file: 'kubevirt' };
      const m = /^(V\d+(?:alpha|beta)?\d*)(.*)$/.exec(tsName);
      if (!m) throw new Error(`unexpected KubeVirt type name ${tsName}`);
      return { source, tsName, name: `io.kubevirt.${m[1].toLowerCase()}.${m[2]}`, file: 'kubevirt' };
    }
    // CDI dist: V1beta1* are CDI's own, V1* are copies of core/meta types.
    if (tsName.startsWith('V1beta1')) return { source, tsName, name: `io.kubevirt.cdi.v1beta1.${tsName.slice(7)}`, file: 'cdi' };
    if (tsName.startsWith('V1')) {
      for (const prefix of ['IoK8sApiCoreV1', 'IoK8sApimachineryPkgApisMetaV1']) {
        if (k8s.interfaces.has(prefix + tsName.slice(2))) return this.resolve(k8s, prefix + tsName.slice(2));
      }
    }
    if (tsName === 'ApiNodePlacement') return { source, tsName, name: 'io.kubevirt.controller-lifecycle-operator-sdk.api.NodePlacement', file: 'cdi' };
    throw new Error(`cannot place CDI type ${tsName}`);
  }

  ref(source: Source, tsName: string): string {
    const r = this.resolve(source, tsName);
    this.resolvedByName.set(r.name, r);
    if (!this.emitted.has(r.name)) {
      this.emitted.add(r.name);
      this.queue.push(r);
    }
    return r.name;
  }

  run(): void {
    for (const [id, name] of ROOTS) this.ref(this.sources[id], name);
    while (this.queue.length > 0) this.emit(this.queue.shift()!);
    this.schemas.kubernetes[QUANTITY] = {
      description: 'Quantity is a fixed-point representation of a number (e.g. "64Mi", "1.5Gi", "500m", "2"). Accepted as a string or a number.',
      oneOf: [{ type: 'string' }, { type: 'number' }],
    };
    this.schemas.kubernetes[INT_OR_STRING] = {
      description: INT_OR_STRING_DESC_PREFIX + ' It accepts either an integer or a string.',
      format: 'int-or-string',
      oneOf: [{ type: 'integer' }, { type: 'string' }],
    };
  }

  private emit(r: Resolved): void {
    const decl = r.source.interfaces.get(r.tsName);
    if (!decl) throw new Error(`${r.source.id}: no interface ${r.tsName}`);
    const wire = r.source.wire.get(r.tsName);
    if (!wire) throw new Error(`${r.source.id}: no FromJSONTyped for ${r.tsName}; cannot verify wire names`);
    const shortName = r.tsName.replace(/^(IoK8s|K8sIo)\w*?V\d+(?:alpha\d+|beta\d+)?/, '').replace(/^V\d+(?:alpha\d+|beta\d+)?/, '');
    const properties: Record<string, Json> = {};
    const required: string[] = [];
    const members = [...decl.members].filter(ts.isPropertySignature);
    for (const m of members) {
      const tsProp = ts.isIdentifier(m.name) || ts.isStringLiteral(m.name) ? m.name.text : m.name.getText();
      const wireName = wire.get(tsProp);
      if (wireName === undefined) throw new Error(`${r.tsName}.${tsProp}: not read by its FromJSONTyped`);
      if (!m.type) throw new Error(`${r.tsName}.${tsProp}: untyped`);
      const desc = descriptionOf(m);
      let prop = this.typeSchema(r.source, m.type, desc, shortName, wireName);
      prop = this.describe(prop, desc, wireName);
      const extra = PATCH_META[r.name]?.[wireName];
      if (extra) prop = { ...prop, ...extra };
      properties[wireName] = prop;
      if (!m.questionToken) required.push(wireName);
    }
    for (const [name, prop] of Object.entries(MISSING_FIELDS[r.name] ?? {})) properties[name] ??= prop;
    const schema: JsonSchema = {};
    const desc = descriptionOf(decl);
    if (desc) schema.description = desc;
    schema.type = 'object';
    if (Object.keys(properties).length > 0) schema.properties = properties;
    if (required.length > 0) schema.required = required;
    this.schemas[r.file][r.name] = schema;
  }

  /** Attaches a field description; $refs get wrapped in allOf since OpenAPI 3.0 ignores $ref siblings. */
  private describe(prop: JsonSchema, desc: string, wireName: string): JsonSchema {
    let text = desc;
    const ref = typeof prop.$ref === 'string' ? prop.$ref : undefined;
    if (ref === `#/components/schemas/${QUANTITY}` || ref === `#/components/schemas/${INT_OR_STRING}`) return prop;
    if (!text && ref) {
      const target = ref.slice('#/components/schemas/'.length);
      if (wireName === 'metadata' && target.endsWith('.ObjectMeta')) text = OBJECT_META_FIELD_DESC;
      else if (wireName === 'metadata' && target.endsWith('.ListMeta')) text = LIST_META_FIELD_DESC;
      else text = this.typeDescription(target);
    }
    if (!text) return prop;
    if (ref) return { description: text, allOf: [{ $ref: ref }] };
    return { description: text, ...prop };
  }

  private readonly resolvedByName = new Map<string, Resolved>();

  private typeDescription(name: string): string {
    const r = this.resolvedByName.get(name);
    const decl = r?.source.interfaces.get(r.tsName);
    return decl ? descriptionOf(decl) : '';
  }

  private typeSchema(source: Source, t: ts.TypeNode, desc: string, owner: string, wireName: string): JsonSchema {
    switch (t.kind) {
      case ts.SyntaxKind.StringKeyword:
        if (desc.startsWith(QUANTITY_DESC_PREFIX)) return { $ref: `#/components/schemas/${QUANTITY}` };
        if (desc.startsWith(INT_OR_STRING_DESC_PREFIX)) return { $ref: `#/components/schemas/${INT_OR_STRING}` };
        return { type: 'string' };
      case ts.SyntaxKind.NumberKeyword:
        return FLOAT_FIELDS.has(wireName) ? { type: 'number', format: 'double' } : { type: 'integer' };
      case ts.SyntaxKind.BooleanKeyword:
        return { type: 'boolean' };
      case ts.SyntaxKind.AnyKeyword:
      case ts.SyntaxKind.UnknownKeyword:
        return { 'x-kubernetes-preserve-unknown-fields': true };
      case ts.SyntaxKind.ObjectKeyword:
        // Upstream empty structs (masquerade: {}, blank: {}) and RawExtensions: any object is kept.
        return { type: 'object', 'x-kubernetes-preserve-unknown-fields': true };
    }
    if (ts.isArrayTypeNode(t)) return { type: 'array', items: this.typeSchema(source, t.elementType, '', owner, '') };
    if (ts.isTypeLiteralNode(t)) {
      const index = t.members.find(ts.isIndexSignatureDeclaration);
      if (!index || t.members.length !== 1) throw new Error(`${owner}.${wireName}: unsupported type literal`);
      const quantityMap = QUANTITY_MAPS[owner]?.includes(wireName) ?? false;
      const value = quantityMap ? { $ref: `#/components/schemas/${QUANTITY}` } : this.typeSchema(source, index.type, '', owner, '');
      return { type: 'object', additionalProperties: value };
    }
    if (ts.isTypeReferenceNode(t) && ts.isIdentifier(t.typeName)) {
      const name = t.typeName.text;
      if (name === 'Array' && t.typeArguments?.length === 1) {
        return { type: 'array', items: this.typeSchema(source, t.typeArguments[0], '', owner, '') };
      }
      if (name === 'Date') return { type: 'string', format: 'date-time' };
      const enumValues = source.enums.get(name);
      if (enumValues) return { type: 'string', enum: enumValues };
      if (source.interfaces.has(name)) return { $ref: `#/components/schemas/${this.ref(source, name)}` };
    }
    throw new Error(`${owner}.${wireName}: unsupported type ${t.getText()}`);
  }
}

function sortKeys(v: Json): Json {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    const out: { [k: string]: Json } = {};
    for (const k of Object.keys(v).sort()) out[k] = sortKeys(v[k]);
    return out;
  }
  return v;
}

export const UPSTREAM_FILES: SourceId[] = ['kubernetes', 'kubevirt', 'cdi'];

/** Returns file name -> file text for packages/api/upstream/. Deterministic. */
export function generateUpstreamSchemas(): Record<string, string> {
  // The package's `exports` hide package.json; resolve an exported entry and walk up from dist/.
  const require = createRequire(import.meta.url);
  const pkgDir = join(dirname(require.resolve('@kubevirt-ui-ext/kubevirt-api/kubevirt')), '..', '..');
  const pkgJson = join(pkgDir, 'package.json');
  const version = (JSON.parse(readFileSync(pkgJson, 'utf8')) as { version: string }).version;
  const sources = {
    kubernetes: loadSource('kubernetes', pkgDir),
    kubevirt: loadSource('kubevirt', pkgDir),
    cdi: loadSource('cdi', pkgDir),
  };
  const gen = new Generator(sources);
  gen.run();
  const files: Record<string, string> = {};
  for (const id of UPSTREAM_FILES) {
    const doc = {
      generatedBy: 'scripts/gen-upstream-schemas.ts',
      source: `@kubevirt-ui-ext/kubevirt-api@${version} dist/${DIST_DIRS[id]}`,
      schemas: sortKeys(gen.schemas[id]),
    };
    files[`${id}.json`] = JSON.stringify(doc, null, 1) + '\n';
  }
  return files;
}

export const UPSTREAM_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'packages', 'api', 'upstream');

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  mkdirSync(UPSTREAM_DIR, { recursive: true });
  for (const [name, text] of Object.entries(generateUpstreamSchemas())) {
    writeFileSync(join(UPSTREAM_DIR, name), text);
    console.log(`${name}: ${Object.keys((JSON.parse(text) as { schemas: object }).schemas).length} schemas, ${text.length} bytes`);
  }
}
