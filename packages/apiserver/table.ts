/**
 * Server-side printing: `kubectl get` asks for a meta.k8s.io/v1 Table and prints its cells, so
 * the columns a kind shows (printerColumns) are decided here, as for CRDs in Kubernetes.
 */
import { netpol, type KindInfo, type PrinterColumn } from '@vessel/api';
import type { StoredObject } from './objects.ts';

export interface TableColumn {
  name: string;
  type: string;
  format: string;
  description: string;
  priority: number;
}
export interface TableRow {
  cells: unknown[];
  object: unknown;
}
export interface Table {
  kind: 'Table';
  apiVersion: 'meta.k8s.io/v1';
  metadata: { resourceVersion?: string; continue?: string };
  columnDefinitions: TableColumn[];
  rows: TableRow[];
}

/** True when the Accept header asks for a Table (kubectl get's default). */
export function wantsTable(accept: string | undefined): boolean {
  return !!accept && accept.split(',').some((part) => /;\s*as=Table/.test(part) && /g=meta\.k8s\.io/.test(part));
}

/**
 * Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a[*].b`, `.a['x.y']`
 * and filters like `.conditions[?(@.type=='Ready')].status`. Returns every match.
 */
export function evalPath(obj: unknown, path: string): unknown[] {
  let cur: unknown[] = [obj];
  const re = /\.([A-Za-z0-9_-]+)|\[(\d+)\]|\['([^']+)'\]|\[\*\]|\[\?\(@\.([A-Za-z0-9_.-]+)\s*==\s*['"]([^'"]*)['"]\)\]/g;
  let m: RegExpExecArray | null;
  const field = (v: unknown, k: string) => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>)[k] : undefined);
  while ((m = re.exec(path)) !== null) {
    const [token, name, index, quoted, filterKey, filterValue] = m;
    if (name !== undefined || quoted !== undefined) cur = cur.map((v) => field(v, name ?? quoted));
    else if (index !== undefined) cur = cur.map((v) => (Array.isArray(v) ? v[Number(index)] : undefined));
    else if (token === '[*]') cur = cur.flatMap((v) => (Array.isArray(v) ? v : []));
    else cur = cur.flatMap((v) => (Array.isArray(v) ? v : [])).filter((v) => String(filterKey.split('.').reduce(field, v as unknown)) === filterValue);
    cur = cur.filter((v) => v !== undefined && v !== null);
  }
  return cur;
}

/** Kubernetes' HumanDuration: 45s, 4m30s, 25m, 3h20m, 20h, 3d4h, 40d, 3y20d. */
export function age(timestamp: string | undefined, now = Date.now()): string {
  if (!timestamp) return '<unknown>';
  const s = Math.max(0, Math.floor((now - Date.parse(timestamp)) / 1000));
  const two = (big: number, unitA: string, small: number, unitB: string) => `${big}${unitA}${small ? `${small}${unitB}` : ''}`;
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60),
    h = Math.floor(m / 60),
    d = Math.floor(h / 24),
    y = Math.floor(d / 365);
  if (m < 10) return two(m, 'm', s % 60, 's');
  if (m < 180) return `${m}m`;
  if (h < 8) return two(h, 'h', m % 60, 'm');
  if (h < 48) return `${h}h`;
  if (h < 24 * 8) return two(d, 'd', h % 24, 'h');
  if (d < 365 * 2) return `${d}d`;
  if (d < 365 * 8) return two(y, 'y', d % 365, 'd');
  return `${y}y`;
}

function cell(col: PrinterColumn, obj: StoredObject): unknown {
  const values = evalPath(obj, col.jsonPath);
  if (col.count) {
    const v = values[0];
    return Array.isArray(v) ? v.length : v && typeof v === 'object' ? Object.keys(v).length : 0;
  }
  if (values.length === 0) return col.type === 'date' ? '<unknown>' : col.type === 'integer' || col.type === 'number' ? null : '';
  if (col.type === 'date') return age(String(values[0]));
  if (values.length === 1 && typeof values[0] !== 'object') return values[0];
  return values.map((v) => (typeof v === 'object' ? JSON.stringify(v) : String(v))).join(',');
}

/**
 * Cells kubectl's built-in printers compute rather than read from one path, keyed by
 * group/Kind/column: a Node's STATUS (Ready, NotReady or Unknown from the Ready condition, plus
 * SchedulingDisabled when cordoned).
 */
const COMPUTED: Record<string, (obj: StoredObject) => unknown> = {
  // kubectl prints an IPAddress's parent as resource/namespace/name (resource/name when cluster-scoped).
  'networking.k8s.io/IPAddress/ParentRef': (o) => {
    const p = (o.spec as { parentRef?: { group?: string; resource?: string; namespace?: string; name?: string } } | undefined)?.parentRef;
    if (!p) return '<none>';
    const resource = p.group ? `${p.resource}.${p.group}` : p.resource;
    return [resource, p.namespace, p.name].filter(Boolean).join('/');
  },
  // kubectl's NetworkPolicy printer: the pod selector as app=web, <none> when it selects all.
  'networking.k8s.io/NetworkPolicy/Pod-Selector': (o) => netpol.formatSelector((o.spec as { podSelector?: netpol.LabelSelector } | undefined)?.podSelector),
  // kubectl's Service printer: PORT(S) as 80/TCP or 80:30080/TCP, EXTERNAL-IP <none> unless a load balancer has one.
  '/Service/Port(s)': (o) => {
    const ports = (o.spec as { ports?: { port?: number; nodePort?: number; protocol?: string }[] } | undefined)?.ports ?? [];
    return ports.length ? ports.map((p) => `${p.port}${p.nodePort ? `:${p.nodePort}` : ''}/${p.protocol ?? 'TCP'}`).join(',') : '<none>';
  },
  '/Service/External-IP': (o) => {
    const ips = evalPath(o, '.status.loadBalancer.ingress[*].ip');
    if (ips.length) return ips.join(',');
    return (o.spec as { type?: string } | undefined)?.type === 'LoadBalancer' ? '<pending>' : '<none>';
  },
  '/Service/Selector': (o) => {
    const sel = (o.spec as { selector?: Record<string, string> } | undefined)?.selector ?? {};
    const pairs = Object.entries(sel)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]) => `${k}=${v}`);
    return pairs.length ? pairs.join(',') : '<none>';
  },
  // kubectl's EndpointSlice printer: at most three ports and addresses, then "+ N more...", <unset> when none.
  'discovery.k8s.io/EndpointSlice/Ports': (o) =>
    moreList(
      evalPath(o, '.ports[*]').map((p) => {
        const q = p as { port?: number; name?: string };
        return q.port !== undefined ? String(q.port) : (q.name ?? '*');
      }),
    ),
  'discovery.k8s.io/EndpointSlice/Endpoints': (o) => moreList(evalPath(o, '.endpoints[*].addresses[*]').map(String)),
  // kubectl's PriorityClass printer: GLOBAL-DEFAULT false when unset.
  'scheduling.k8s.io/PriorityClass/Global-Default': (o) => (o as { globalDefault?: unknown }).globalDefault === true,
  '/Node/Status': (o) => {
    const ready = evalPath(o, ".status.conditions[?(@.type=='Ready')].status")[0];
    const status = [ready === undefined ? 'Unknown' : ready === 'True' ? 'Ready' : 'NotReady'];
    if ((o.spec as { unschedulable?: unknown } | undefined)?.unschedulable === true) status.push('SchedulingDisabled');
    return status.join(',');
  },
};

function moreList(items: string[], max = 3): string {
  if (items.length > max) return `${items.slice(0, max).join(',')} + ${items.length - max} more...`;
  return items.length ? items.join(',') : '<unset>';
}

/** The NAME cell: kubectl's StorageClass printer marks the default class with " (default)". */
function nameCell(info: KindInfo, o: StoredObject): string {
  if (info.group === 'storage.k8s.io' && info.kind === 'StorageClass') {
    const a = o.metadata.annotations ?? {};
    // Kubernetes still honours the beta annotation.
    if (a['storageclass.kubernetes.io/is-default-class'] === 'true' || a['storageclass.beta.kubernetes.io/is-default-class'] === 'true')
      return `${o.metadata.name} (default)`;
  }
  return o.metadata.name;
}

/** A kind's own columns, as its CRD or Kubernetes' printer declares them; Age alone for a kind without any (the CRD default). */
function columnsOf(info: KindInfo): PrinterColumn[] {
  return info.printerColumns.length ? info.printerColumns : [{ name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' }];
}

export function toTable(info: KindInfo, objects: StoredObject[], meta: Table['metadata'], includeObject: string | undefined): Table {
  const cols = columnsOf(info);
  return {
    kind: 'Table',
    apiVersion: 'meta.k8s.io/v1',
    metadata: meta,
    columnDefinitions: [
      { name: 'Name', type: 'string', format: 'name', description: 'Name must be unique within a namespace.', priority: 0 },
      ...cols.map((c) => ({
        name: c.name,
        type: c.type === 'date' ? 'date' : c.type,
        format: '',
        description: c.description ?? '',
        priority: c.priority ?? 0,
      })),
    ],
    rows: objects.map((o) => ({
      cells: [nameCell(info, o), ...cols.map((c) => COMPUTED[`${info.group}/${info.kind}/${c.name}`]?.(o) ?? cell(c, o))],
      object:
        includeObject === 'None'
          ? undefined
          : includeObject === 'Object'
            ? o
            : { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: o.metadata },
    })),
  };
}
