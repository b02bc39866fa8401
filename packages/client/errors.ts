/**
 * Errors the client throws. Callers branch on `code` (a stable string) rather than on the
 * message text; messages say what to do next because the CLI prints them as they are.
 */

export type ClientErrorCode =
  | 'NoKubeconfig' // no kubeconfig file could be found
  | 'BadKubeconfig' // the file exists but cannot be used (bad YAML, missing context, ...)
  | 'Unreachable' // the server did not answer (refused, DNS, TLS)
  | 'BadResponse' // the server answered with something that is not the expected JSON
  | 'UnknownResource' // no resource type with that name in discovery
  | 'BadManifest'; // a file given to apply/delete -f cannot be used

/** A failure on the client side (before or outside a server answer). */
export class ClientError extends Error {
  readonly code: ClientErrorCode;
  constructor(code: ClientErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ClientError';
    this.code = code;
  }
}

/** One field-level problem reported by the server (Kubernetes StatusCause). */
export interface StatusCause {
  field?: string;
  message?: string;
  reason?: string;
}

/** The Kubernetes `Status` object servers send with every failure. */
export interface Status {
  kind: 'Status';
  apiVersion?: string;
  status?: 'Success' | 'Failure';
  message?: string;
  reason?: string;
  code?: number;
  details?: { name?: string; group?: string; kind?: string; uid?: string; causes?: StatusCause[]; retryAfterSeconds?: number };
}

/**
 * A failure the server reported. `code` is the HTTP status (as in the Status object) and
 * `reason` the Kubernetes reason string ('NotFound', 'Conflict', 'Invalid', ...).
 */
export class StatusError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly causes: StatusCause[];
  readonly status: Status;
  constructor(status: Status, httpCode: number) {
    super(status.message || `the server answered ${httpCode} ${status.reason ?? ''}`.trim());
    this.name = 'StatusError';
    this.status = status;
    this.code = status.code ?? httpCode;
    this.reason = status.reason ?? reasonForCode(this.code);
    this.causes = status.details?.causes ?? [];
  }
}

export function isStatusError(err: unknown, reason?: string): err is StatusError {
  return err instanceof StatusError && (reason === undefined || err.reason === reason);
}

export function isNotFound(err: unknown): boolean {
  return err instanceof StatusError && err.code === 404;
}

/** The reason Kubernetes uses for a bare HTTP code, for servers that send no Status body. */
export function reasonForCode(code: number): string {
  const reasons: Record<number, string> = {
    400: 'BadRequest',
    401: 'Unauthorized',
    403: 'Forbidden',
    404: 'NotFound',
    405: 'MethodNotAllowed',
    406: 'NotAcceptable',
    409: 'Conflict',
    410: 'Expired',
    413: 'RequestEntityTooLarge',
    415: 'UnsupportedMediaType',
    422: 'Invalid',
    429: 'TooManyRequests',
    500: 'InternalError',
    503: 'ServiceUnavailable',
    504: 'Timeout',
  };
  return reasons[code] ?? 'Unknown';
}
