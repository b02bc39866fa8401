/**
 * The JSON shapes the client reads and writes, loose (any Kubernetes-like server's objects fit).
 */

// One object type for the whole project (@vessel/api's); a type-only import, so the client still
// loads without @vessel/api's schemas.
import type { KubeObject } from '@vessel/api';
export type { KubeObject, ObjectMeta } from '@vessel/api';

export interface ListMeta {
  resourceVersion?: string;
  continue?: string;
  remainingItemCount?: number;
}

export interface KubeList<T extends KubeObject = KubeObject> {
  apiVersion?: string;
  kind?: string;
  metadata?: ListMeta;
  items: T[];
}

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';

export interface WatchEvent<T = KubeObject> {
  type: WatchEventType;
  object: T;
}

/** meta.k8s.io/v1 Table, what servers send for `Accept: application/json;as=Table;...`. */
export interface TableColumnDefinition {
  name: string;
  type: string;
  format?: string;
  description?: string;
  priority?: number;
}

export interface TableRow {
  cells: unknown[];
  /** With includeObject=Metadata (the default) a PartialObjectMetadata. */
  object?: KubeObject;
}

export interface Table {
  kind: 'Table';
  apiVersion?: string;
  metadata?: ListMeta;
  columnDefinitions: TableColumnDefinition[];
  rows: TableRow[];
}

export function isTable(value: unknown): value is Table {
  return typeof value === 'object' && value !== null && (value as { kind?: unknown }).kind === 'Table' && Array.isArray((value as { rows?: unknown }).rows);
}
