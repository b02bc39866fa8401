/**
 * Query parameters with Kubernetes' parsing rules: booleans as Go's strconv.ParseBool (what
 * client-go's parameter codec uses, so `watch=True` from the Python client is a watch), and
 * resourceVersion as the store versioner's decimal integer, with kube-apiserver's wait for a
 * revision the store has not reached yet.
 */
import type { Store } from '@vessel/store';
import { badRequest, invalidResourceVersion, tooLargeResourceVersion } from './errors.ts';

const TRUE = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);
const FALSE = new Set(['0', 'f', 'F', 'FALSE', 'false', 'False']);

/** undefined when the parameter is absent or empty; any other spelling than ParseBool's is a 400. */
export function parseBool(name: string, value: string | undefined): boolean | undefined {
  if (value === undefined || value === '') return undefined;
  if (TRUE.has(value)) return true;
  if (FALSE.has(value)) return false;
  throw badRequest(`invalid value for ${name}: strconv.ParseBool: parsing ${JSON.stringify(value)}: invalid syntax (use true or false)`, [
    { reason: 'FieldValueInvalid', field: name, message: `Invalid value: ${JSON.stringify(value)}: must be true or false` },
  ]);
}

/** The revision a resourceVersion names: undefined for "" (none given); 0 for "0" ("any"). */
export function parseResourceVersion(value: string | undefined, field = 'resourceVersion'): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^\d{1,19}$/.test(value) || !Number.isSafeInteger(Number(value))) throw invalidResourceVersion(value, field);
  return Number(value);
}

/** How long a read from a future resourceVersion waits for the store to get there (kube's cacher waits 3 s). */
export const TOO_LARGE_WAIT_MS = 3000;

/**
 * Resolves once the store's revision is at least `wanted`; after `waitMs` a 504 Timeout with the
 * ResourceVersionTooLarge cause, as kube-apiserver answers a list or watch from a revision it
 * has not seen.
 */
export async function waitForRevision(store: Store, wanted: number, waitMs = TOO_LARGE_WAIT_MS): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const current = await store.currentRevision();
    if (current >= wanted) return;
    if (Date.now() >= deadline) throw tooLargeResourceVersion(wanted, current);
    await new Promise((r) => setTimeout(r, Math.min(100, Math.max(1, deadline - Date.now()))));
  }
}
