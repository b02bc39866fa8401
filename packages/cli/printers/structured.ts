/**
 * -o yaml / -o json / -o name. Keys are sorted, as kubectl's output of custom resources is
 * (they pass through Go maps), so output is stable; several objects print as a v1 List.
 */
import { stringify } from 'yaml';
import { qualifiedKind, type ApiResource, type KubeObject } from '@vessel/client';

/** Deep copy with object keys in sorted order. */
export function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, sortKeys((value as Record<string, unknown>)[k])]),
    );
  }
  return value;
}

export function toYaml(value: unknown): string {
  // indentSeq false: `- item` directly under its key, like kubectl; lineWidth 0: never fold.
  return stringify(sortKeys(value), { indentSeq: false, lineWidth: 0, minContentWidth: 0 });
}

export function toJson(value: unknown): string {
  return JSON.stringify(sortKeys(value), null, 4) + '\n';
}

/** What kubectl prints for several objects: a v1 List. */
export function asList(items: KubeObject[]): KubeObject {
  return { apiVersion: 'v1', kind: 'List', items, metadata: { resourceVersion: '' } };
}

/** `virtualmachine.kubevirt.io/demo` (-o name). */
export function objectName(res: Pick<ApiResource, 'kind' | 'group'>, obj: KubeObject): string {
  return `${qualifiedKind(res)}/${obj.metadata?.name ?? ''}`;
}

export type StructuredFormat = 'yaml' | 'json' | 'name';

/** Formats objects in a structured format; `single` prints one object rather than a List. */
export function formatObjects(format: StructuredFormat, res: Pick<ApiResource, 'kind' | 'group'>, objects: KubeObject[], single: boolean): string {
  if (format === 'name') return objects.map((o) => objectName(res, o) + '\n').join('');
  const value = single && objects.length === 1 ? objects[0] : asList(objects);
  return format === 'yaml' ? toYaml(value) : toJson(value);
}
