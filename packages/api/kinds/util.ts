/**
 * Shared plumbing for the kind-specific (semantic) validators in this folder. They run after the
 * structural walk, on objects whose types may still be wrong, so every accessor here is defensive.
 */
import type { FieldCause, KubeObject } from '../types.ts';

export interface SemanticContext {
  op: 'create' | 'update';
  old: KubeObject | undefined;
  causes: FieldCause[];
  warnings: string[];
  /** Paths of fields the upstream schema does not know (the structural walk reported or pruned them). */
  unknownFields?: ReadonlySet<string>;
}

export type SemanticValidator = (obj: KubeObject, ctx: SemanticContext) => void;

export type Obj = Record<string, unknown>;

import { isObject as isObj } from '../objects.ts';
export { isObj };

export function obj(v: unknown): Obj | undefined {
  return isObj(v) ? v : undefined;
}

/** The array at v, or [] when absent or not an array (structural validation reports the latter). */
export function arr(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

export function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/** Present and not null (Kubernetes treats null as unset). */
export function isSet(v: unknown): boolean {
  return v !== undefined && v !== null;
}

/** Structural equality of JSON values. */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== 'object') return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const ao = a as Obj;
  const bo = b as Obj;
  const ak = Object.keys(ao).filter((k) => ao[k] !== undefined);
  const bk = Object.keys(bo).filter((k) => bo[k] !== undefined);
  if (ak.length !== bk.length) return false;
  for (const k of ak) if (!jsonEqual(ao[k], bo[k])) return false;
  return true;
}
