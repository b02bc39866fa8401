/**
 * `vessel describe`'s human view, after kubectl's generic describer: Name/Namespace/Labels/
 * Annotations first, then every other field with camelCase keys spelled as words
 * ("runStrategy" -> "Run Strategy"), then the object's Events as a table.
 */
import { isObject } from '@vessel/api';
import type { KubeObject } from '@vessel/client';
import { age, renderRows } from './table.ts';

const LAST_APPLIED = 'kubectl.kubernetes.io/last-applied-configuration';
/** Metadata fields shown in the header or not worth showing. */
const HEADER_METADATA = new Set(['name', 'namespace', 'labels', 'annotations', 'managedFields']);
const INITIALISMS = new Set([
  'API',
  'CPU',
  'DNS',
  'HTTP',
  'HTTPS',
  'ID',
  'IP',
  'IPS',
  'JSON',
  'MAC',
  'OS',
  'PCI',
  'TCP',
  'TLS',
  'UDP',
  'UID',
  'URL',
  'UUID',
  'VM',
  'VMI',
]);

/** "creationTimestamp" -> "Creation Timestamp", "apiVersion" -> "API Version"; keys like "kubevirt.io/x" stay as they are. */
export function smartLabel(key: string): string {
  if (/[^A-Za-z0-9]/.test(key)) return key;
  const words = key.match(/[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+/g) ?? [key];
  return words.map((w) => (INITIALISMS.has(w.toUpperCase()) ? w.toUpperCase() : w[0].toUpperCase() + w.slice(1))).join(' ');
}

function scalar(value: unknown): string {
  if (value === null || value === undefined) return '<nil>';
  return typeof value === 'string' ? value : String(value);
}

const isMap = isObject;

/**
 * Lines for a mapping at `indent` levels (2 spaces each). Scalar fields of one mapping are
 * aligned together, as kubectl's tabwriter aligns consecutive lines.
 */
function describeMap(map: Record<string, unknown>, indent: number, lines: string[]): void {
  const keys = Object.keys(map).sort();
  const pad = '  '.repeat(indent);
  const scalarWidth = Math.max(0, ...keys.filter((k) => !isMap(map[k]) && !Array.isArray(map[k])).map((k) => smartLabel(k).length + 1));
  for (const key of keys) {
    const value = map[key];
    const label = `${smartLabel(key)}:`;
    if (isMap(value)) {
      lines.push(`${pad}${label}`);
      describeMap(value, indent + 1, lines);
    } else if (Array.isArray(value)) {
      lines.push(`${pad}${label}`);
      for (const item of value) {
        if (isMap(item)) describeMap(item, indent + 1, lines);
        else lines.push(`${'  '.repeat(indent + 1)}${scalar(item)}`);
      }
    } else {
      lines.push(`${pad}${label.padEnd(scalarWidth + 2)}${scalar(value)}`);
    }
  }
}

/** `key=value` lines (labels) or `key: value` lines (annotations), continuation lines indented. */
function multiline(title: string, entries: Record<string, string> | undefined, sep: string, width: number): string[] {
  const pairs = Object.entries(entries ?? {})
    .filter(([k]) => k !== LAST_APPLIED)
    .sort(([a], [b]) => a.localeCompare(b));
  const head = `${title}:`.padEnd(width);
  if (pairs.length === 0) return [`${head}<none>`];
  return pairs.map(([k, v], i) => `${i === 0 ? head : ' '.repeat(width)}${k}${sep}${v}`);
}

/** The object part of `describe`. */
export function describeObject(obj: KubeObject): string {
  const meta = obj.metadata ?? {};
  const width = 'Annotations:'.length + 2;
  const lines = [`${'Name:'.padEnd(width)}${meta.name ?? ''}`];
  if (meta.namespace) lines.push(`${'Namespace:'.padEnd(width)}${meta.namespace}`);
  lines.push(...multiline('Labels', meta.labels, '=', width));
  lines.push(...multiline('Annotations', meta.annotations, ': ', width));
  const rest: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(obj)) {
    if (key !== 'metadata') rest[key] = value;
  }
  const otherMeta = Object.fromEntries(Object.entries(meta).filter(([k]) => !HEADER_METADATA.has(k)));
  if (Object.keys(otherMeta).length > 0) rest.metadata = otherMeta;
  describeMap(rest, 0, lines);
  return lines.join('\n') + '\n';
}

interface EventLike {
  type?: string;
  reason?: string;
  message?: string;
  count?: number;
  firstTimestamp?: string;
  lastTimestamp?: string;
  eventTime?: string;
  source?: { component?: string; host?: string };
  reportingComponent?: string;
  reportingController?: string;
  metadata?: { creationTimestamp?: string };
}

/** When an event last happened: lastTimestamp, else eventTime, else when it was created. */
export function eventTime(e: EventLike): string | undefined {
  return e.lastTimestamp || e.eventTime || e.firstTimestamp || e.metadata?.creationTimestamp;
}

/** The Events section: a Type/Reason/Age/From/Message table, oldest first, or `<none>`. */
export function describeEvents(events: KubeObject[], now = Date.now()): string {
  if (events.length === 0) return 'Events:  <none>\n';
  const sorted = [...(events as EventLike[])].sort((a, b) => Date.parse(eventTime(a) ?? '') - Date.parse(eventTime(b) ?? ''));
  const rows = sorted.map((e) => {
    const last = eventTime(e);
    const first = e.firstTimestamp || e.eventTime || last;
    // kubectl: "5m (x3 over 10m)" for a repeated event.
    const when = (e.count ?? 1) > 1 ? `${age(last, now)} (x${e.count} over ${age(first, now)})` : age(last, now);
    const from = e.source?.component || e.reportingController || e.reportingComponent || '';
    return ['  ' + (e.type ?? ''), e.reason ?? '', when, from, (e.message ?? '').trim()];
  });
  return 'Events:\n' + renderRows([['  Type', 'Reason', 'Age', 'From', 'Message'], ['  ----', '------', '----', '----', '-------'], ...rows]);
}
