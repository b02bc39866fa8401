/**
 * Migration settings (docs/migration.md "Settings"): the cluster's `KubeVirt` object
 * (`spec.configuration.migrations`, `spec.configuration.evictionStrategy`) and the
 * `MigrationPolicy` objects that override it for some VMIs, resolved as KubeVirt resolves them
 * into the one configuration the migration controller writes into the VMI's migrationState.
 */
import { forbidden, invalid, notSupported } from './errors.ts';
import { isSet, obj, str, type SemanticContext } from './kinds/util.ts';
import { tryParseQuantity } from './quantity.ts';
import type { KubeObject } from './types.ts';

/** The one KubeVirt object Vessel reads (as virt-operator's default install). */
export const KUBEVIRT_NAMESPACE = 'kubevirt';
export const KUBEVIRT_NAME = 'kubevirt';

/** KubeVirt's MigrationConfiguration, the fields Vessel applies. */
export interface MigrationConfiguration {
  bandwidthPerMigration: string;
  completionTimeoutPerGiB: number;
  progressTimeout: number;
  parallelMigrationsPerCluster: number;
  parallelOutboundMigrationsPerNode: number;
  allowAutoConverge: boolean;
  allowPostCopy: boolean;
  /** The migration stream in plain TCP instead of TLS (both agents read it from the migrationState). */
  disableTLS: boolean;
  /**
   * KubeVirt's meaning: a migration past its completion or progress timeout is not cancelled;
   * post-copy when allowed, else the source pauses the guest so the copy ends (the target resumes it).
   */
  allowWorkloadDisruption: boolean;
}

/** KubeVirt's defaults (bandwidth 0: unlimited). */
export const MIGRATION_DEFAULTS: Readonly<MigrationConfiguration> = Object.freeze({
  bandwidthPerMigration: '0',
  completionTimeoutPerGiB: 150,
  progressTimeout: 150,
  parallelMigrationsPerCluster: 5,
  parallelOutboundMigrationsPerNode: 2,
  allowAutoConverge: false,
  allowPostCopy: false,
  disableTLS: false,
  allowWorkloadDisruption: false,
});

/** KubeVirt's default nodeDrainTaintKey: the NoSchedule taint that evacuates a node. */
export const DEFAULT_DRAIN_TAINT = 'kubevirt.io/drain';

export const EVICTION_STRATEGIES = ['None', 'LiveMigrate', 'LiveMigrateIfPossible', 'External'] as const;

/** What the server creates on its first start: the object `kubectl edit kubevirt -n kubevirt kubevirt` edits. */
export function defaultKubeVirt(): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'KubeVirt',
    metadata: { name: KUBEVIRT_NAME, namespace: KUBEVIRT_NAMESPACE },
    spec: { configuration: { migrations: {} } },
  };
}

type Obj = Record<string, unknown>;
const migrationsOf = (kv: object | undefined): Obj => obj(obj(obj((kv as Obj | undefined)?.spec)?.configuration)?.migrations) ?? {};

const INT_FIELDS = ['completionTimeoutPerGiB', 'progressTimeout', 'parallelMigrationsPerCluster', 'parallelOutboundMigrationsPerNode'] as const;
const BOOL_FIELDS = ['allowAutoConverge', 'allowPostCopy', 'disableTLS', 'allowWorkloadDisruption'] as const;
const POLICY_FIELDS = ['allowAutoConverge', 'allowPostCopy', 'bandwidthPerMigration', 'completionTimeoutPerGiB', 'allowWorkloadDisruption'] as const;

/** Copies the well-typed fields of `src` over `base` (stored objects were validated; stay defensive anyway). */
function overlay(base: MigrationConfiguration, src: Obj, fields: readonly string[]): MigrationConfiguration {
  const out: MigrationConfiguration = { ...base };
  for (const f of fields) {
    const v = src[f];
    if (f === 'bandwidthPerMigration') {
      if (typeof v === 'string' || typeof v === 'number') out.bandwidthPerMigration = String(v);
    } else if ((INT_FIELDS as readonly string[]).includes(f)) {
      if (typeof v === 'number' && Number.isInteger(v) && v > 0) (out as unknown as Record<string, number>)[f] = v;
    } else if (typeof v === 'boolean') (out as unknown as Record<string, boolean>)[f] = v;
  }
  return out;
}

/** The cluster's migration configuration: the KubeVirt object's fields over KubeVirt's defaults. */
export function clusterMigrationConfiguration(kv: object | undefined): MigrationConfiguration {
  return overlay(MIGRATION_DEFAULTS, migrationsOf(kv), ['bandwidthPerMigration', ...INT_FIELDS, ...BOOL_FIELDS]);
}

/** The taint key whose NoSchedule taint evacuates a node: spec.configuration.migrations.nodeDrainTaintKey, else KubeVirt's default. */
export function nodeDrainTaintKey(kv: object | undefined): string {
  const k = migrationsOf(kv).nodeDrainTaintKey;
  return typeof k === 'string' && k !== '' ? k : DEFAULT_DRAIN_TAINT;
}

/** The cluster default evictionStrategy for VMIs without their own, or undefined (KubeVirt: None). */
export function clusterEvictionStrategy(kv: object | undefined): string | undefined {
  return str(obj(obj((kv as Obj | undefined)?.spec)?.configuration)?.evictionStrategy);
}

/** A VMI's strategy: its own, else the cluster's, else None. */
export function evictionStrategyOf(vmi: object, kv: object | undefined): string {
  return str(obj((vmi as Obj).spec)?.evictionStrategy) ?? clusterEvictionStrategy(kv) ?? 'None';
}

/** Bytes per second of a bandwidth quantity; 0 means unlimited (also for anything unparsable). */
export function bandwidthBytes(q: string): number {
  const n = tryParseQuantity(q);
  return n !== undefined && Number.isFinite(n) && n > 0 ? Math.floor(n) : 0;
}

const nameOf = (o: KubeObject): string => o.metadata?.name ?? '';

const labelsMatch = (selector: unknown, labels: Record<string, string>): number | undefined => {
  let n = 0;
  for (const [k, v] of Object.entries(obj(selector) ?? {})) {
    if (labels[k] !== v) return undefined;
    n++;
  }
  return n;
};

/**
 * KubeVirt's MatchPolicy: a policy matches when every label of both its selectors is on the VMI
 * (virtualMachineInstanceSelector) and its namespace (namespaceSelector); the policy matching the
 * most labels wins, ties go to the first name in alphabetical order. A policy without selectors
 * matches nothing.
 */
export function matchMigrationPolicy<P extends KubeObject>(
  policies: readonly P[],
  vmiLabels: Record<string, string>,
  namespaceLabels: Record<string, string>,
): P | undefined {
  let best: P | undefined;
  let bestScore = -1;
  for (const p of policies) {
    const selectors = obj(obj(p.spec)?.selectors);
    if (!selectors) continue;
    const a = labelsMatch(selectors.virtualMachineInstanceSelector, vmiLabels);
    const b = a === undefined ? undefined : labelsMatch(selectors.namespaceSelector, namespaceLabels);
    if (a === undefined || b === undefined) continue;
    const score = a + b;
    if (score > bestScore || (score === bestScore && best && nameOf(p) < nameOf(best))) {
      best = p;
      bestScore = score;
    }
  }
  return best;
}

/** The effective configuration of one VMI's migration and the policy that shaped it, if any. */
export function effectiveMigrationConfiguration(
  kv: object | undefined,
  policies: readonly KubeObject[],
  vmiLabels: Record<string, string>,
  namespaceLabels: Record<string, string>,
): { configuration: MigrationConfiguration; policyName?: string } {
  const cluster = clusterMigrationConfiguration(kv);
  const policy = matchMigrationPolicy(policies, vmiLabels, namespaceLabels);
  if (!policy) return { configuration: cluster };
  return { configuration: overlay(cluster, obj(policy.spec) ?? {}, POLICY_FIELDS), policyName: nameOf(policy) };
}

function checkBandwidth(v: unknown, path: string, ctx: SemanticContext): void {
  if (!isSet(v)) return;
  const n = tryParseQuantity(String(v));
  // The structural walk reports bad syntax; here only the sign.
  if (n !== undefined && n < 0) ctx.causes.push(invalid(path, v, `${path} must not be negative (0 means unlimited)`));
}

function checkPositiveInt(v: unknown, path: string, ctx: SemanticContext): void {
  if (!isSet(v)) return;
  if (typeof v === 'number' && Number.isInteger(v) && v <= 0) ctx.causes.push(invalid(path, v, `${path} must be a positive integer`));
}

/** spec.configuration.migrations and evictionStrategy of a KubeVirt object (types are the structural walk's). */
export function validateKubeVirt(o: KubeObject, ctx: SemanticContext): void {
  const conf = obj(obj(o.spec)?.configuration);
  if (!conf) return;
  const m = obj(conf.migrations);
  if (m) {
    checkBandwidth(m.bandwidthPerMigration, 'spec.configuration.migrations.bandwidthPerMigration', ctx);
    for (const f of INT_FIELDS) checkPositiveInt(m[f], `spec.configuration.migrations.${f}`, ctx);
    const key = m.nodeDrainTaintKey;
    if (typeof key === 'string' && !TAINT_KEY.test(key)) {
      ctx.causes.push(
        invalid(
          'spec.configuration.migrations.nodeDrainTaintKey',
          key,
          'a taint key: an optional DNS subdomain prefix and /, then a name of 63 characters or less',
        ),
      );
    }
    // A secondary network for the stream needs an address on it on every node, which the agents
    // do not have (docs/migration.md "Settings"): refused rather than silently using the fabric.
    if (isSet(m.network)) {
      ctx.causes.push(
        forbidden('spec.configuration.migrations.network', 'not supported by Vessel: the migration stream uses the cluster fabric (leave network unset)'),
      );
    }
  }
  const es = conf.evictionStrategy;
  if (typeof es === 'string' && !(EVICTION_STRATEGIES as readonly string[]).includes(es)) {
    ctx.causes.push(notSupported('spec.configuration.evictionStrategy', es, EVICTION_STRATEGIES));
  }
}

/** A qualified name, as a taint key: [prefix/]name. */
const TAINT_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;

const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

export function validateMigrationPolicy(o: KubeObject, ctx: SemanticContext): void {
  const spec = obj(o.spec);
  if (!spec) return;
  checkBandwidth(spec.bandwidthPerMigration, 'spec.bandwidthPerMigration', ctx);
  checkPositiveInt(spec.completionTimeoutPerGiB, 'spec.completionTimeoutPerGiB', ctx);
  const sel = obj(spec.selectors);
  for (const key of ['namespaceSelector', 'virtualMachineInstanceSelector']) {
    for (const [k, v] of Object.entries(obj(sel?.[key]) ?? {})) {
      if (typeof v === 'string' && (v.length > 63 || !LABEL_VALUE.test(v))) {
        ctx.causes.push(invalid(`spec.selectors.${key}.${k}`, v, 'a label value: 63 characters or less, alphanumerics, - _ . inside'));
      }
    }
  }
}
