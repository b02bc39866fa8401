/**
 * Kubernetes resource.Quantity parsing ("64Mi", "1.5Gi", "500m", "1e3", 2): the grammar of
 * k8s.io/apimachinery/pkg/api/resource, returning the value as a JS number (bytes for memory,
 * cores for CPU). Doubles are exact for any realistic size (< 2^53 bytes = 8 PiB).
 */

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

// <signedNumber><suffix>; number is digits, digits.digits, digits. or .digits; suffix binary SI,
// decimal SI or a decimal exponent (e/E followed by a signed integer).
const QUANTITY_RE = /^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$/;

/** The message Kubernetes gives for a malformed quantity. */
export const QUANTITY_FORMAT_MESSAGE = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/** Parses a quantity; undefined when it is not one. Numbers (JSON numbers) are accepted as-is. */
export function tryParseQuantity(q: unknown): number | undefined {
  if (typeof q === 'number') return Number.isFinite(q) ? q : undefined;
  if (typeof q !== 'string') return undefined;
  const m = QUANTITY_RE.exec(q);
  if (!m) return undefined;
  const n = Number(m[1]);
  const suffix = m[2] ?? '';
  if (suffix in BINARY) return n * BINARY[suffix];
  if (suffix in DECIMAL) return n * DECIMAL[suffix];
  return n * 10 ** Number(suffix.slice(1));
}

/**
 * Parses a quantity to its numeric value: parseQuantity('64Mi') === 67108864,
 * parseQuantity('500m') === 0.5. Throws a descriptive Error when malformed.
 */
export function parseQuantity(q: string | number): number {
  const v = tryParseQuantity(q);
  if (v === undefined) throw new Error(`invalid quantity ${JSON.stringify(q)}: ${QUANTITY_FORMAT_MESSAGE}`);
  return v;
}
