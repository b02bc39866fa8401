/**
 * Field errors in Kubernetes' shape (k8s.io/apimachinery/pkg/util/validation/field): builders that
 * produce StatusCause-style FieldCauses with the message texts kube-apiserver uses, and the
 * formatter for the overall "X is invalid" message the server puts in a 422 Status.
 */
import type { FieldCause, KindInfo } from './types.ts';

/** Stable cause reasons (metav1.CauseType values). */
export const Reason = {
  Required: 'FieldValueRequired',
  Invalid: 'FieldValueInvalid',
  NotSupported: 'FieldValueNotSupported',
  Duplicate: 'FieldValueDuplicate',
  TooLong: 'FieldValueTooLong',
  Forbidden: 'FieldValueForbidden',
} as const;

/** How kube-apiserver prints a bad value: strings quoted, others as JSON, long ones cut. */
export function formatValue(v: unknown): string {
  let s: string;
  if (typeof v === 'string') s = JSON.stringify(v);
  else if (v === undefined) s = 'null';
  else s = JSON.stringify(v) ?? String(v);
  return s.length > 200 ? `${s.slice(0, 197)}...` : s;
}

export function required(field: string, detail?: string): FieldCause {
  return { reason: Reason.Required, field, message: detail ? `Required value: ${detail}` : 'Required value' };
}

export function invalid(field: string, value: unknown, detail: string): FieldCause {
  return { reason: Reason.Invalid, field, message: `Invalid value: ${formatValue(value)}: ${detail}` };
}

export function notSupported(field: string, value: unknown, supported: readonly string[]): FieldCause {
  return {
    reason: Reason.NotSupported,
    field,
    message: `Unsupported value: ${formatValue(value)}: supported values: ${supported.map((s) => JSON.stringify(s)).join(', ')}`,
  };
}

export function duplicate(field: string, value: unknown, detail?: string): FieldCause {
  return { reason: Reason.Duplicate, field, message: `Duplicate value: ${formatValue(value)}${detail ? `: ${detail}` : ''}` };
}

export function tooLong(field: string, max: number, detail?: string): FieldCause {
  return { reason: Reason.TooLong, field, message: detail ? `Too long: ${detail}` : `Too long: may not be more than ${max} bytes` };
}

export function forbidden(field: string, detail: string): FieldCause {
  return { reason: Reason.Forbidden, field, message: `Forbidden: ${detail}` };
}

/**
 * The message of a 422 Invalid Status, as kube-apiserver words it:
 * `VirtualMachine.kubevirt.io "vm1" is invalid: [spec.running: Invalid value: ..., ...]`.
 */
export function invalidObjectMessage(info: KindInfo, name: string, causes: readonly FieldCause[]): string {
  const qualified = info.group ? `${info.kind}.${info.group}` : info.kind;
  const parts = causes.map((c) => (c.field ? `${c.field}: ${c.message}` : c.message));
  const detail = parts.length === 1 ? parts[0] : `[${parts.join(', ')}]`;
  return `${qualified} ${JSON.stringify(name)} is invalid: ${detail}`;
}
