/**
 * API errors. Every failure a client sees is a Kubernetes `Status`; ApiError carries one.
 * Codes are the Kubernetes `reason` strings so clients (kubectl, client-go) react correctly.
 */
import type { FieldCause } from '@vessel/api';
import { HttpError } from '@vessel/http';
import { isStoreError } from '@vessel/store';

export type StatusReason =
  | 'BadRequest'
  | 'Unauthorized'
  | 'Forbidden'
  | 'NotFound'
  | 'AlreadyExists'
  | 'Conflict'
  | 'Gone'
  | 'Expired'
  | 'Invalid'
  | 'MethodNotAllowed'
  | 'NotAcceptable'
  | 'UnsupportedMediaType'
  | 'RequestEntityTooLarge'
  | 'TooManyRequests'
  | 'InternalError'
  | 'ServiceUnavailable'
  | 'Timeout';

/** metav1.StatusCause: a FieldCause, or a cause that names no field (e.g. ResourceVersionTooLarge). */
export type StatusCause = FieldCause | { reason: string; message: string; field?: undefined };

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  uid?: string;
  causes?: StatusCause[];
  retryAfterSeconds?: number;
}

export interface Status {
  kind: 'Status';
  apiVersion: 'v1';
  metadata: Record<string, never>;
  status: 'Failure' | 'Success';
  message: string;
  reason?: StatusReason;
  details?: StatusDetails;
  code: number;
}

/** An HttpError with the Kubernetes Status reason and details; toStatus is the one place it becomes a Status. */
export class ApiError extends HttpError {
  readonly reason: StatusReason;
  readonly details?: StatusDetails;
  constructor(code: number, reason: StatusReason, message: string, details?: StatusDetails) {
    super(code, message);
    this.name = 'ApiError';
    this.reason = reason;
    this.details = details;
  }

  toStatus(): Status {
    return {
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: this.message,
      reason: this.reason,
      details: this.details,
      code: this.code,
    };
  }
}

/** For `.catch`: NotFound (404) becomes undefined; any other failure is rethrown. */
export function undefinedIfNotFound(err: unknown): undefined {
  if (err instanceof ApiError && err.code === 404) return undefined;
  throw err;
}

const REASONS: Readonly<Record<number, StatusReason>> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  409: 'Conflict',
  413: 'RequestEntityTooLarge',
  422: 'Invalid',
  429: 'TooManyRequests',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

/** The Status reason for an HTTP code another component answered with (InternalError for other 5xx, else BadRequest). */
export function reasonFor(code: number): StatusReason {
  return REASONS[code] ?? (code >= 500 ? 'InternalError' : 'BadRequest');
}

/** Names a resource the way Kubernetes messages do: `virtualmachines.kubevirt.io "demo"`. */
export function qualified(plural: string, group: string): string {
  return group ? `${plural}.${group}` : plural;
}

export const badRequest = (message: string, causes?: FieldCause[]) => new ApiError(400, 'BadRequest', message, causes ? { causes } : undefined);

export const notFound = (plural: string, group: string, name: string) =>
  new ApiError(404, 'NotFound', `${qualified(plural, group)} "${name}" not found`, { name, group, kind: plural });

export const alreadyExists = (plural: string, group: string, name: string) =>
  new ApiError(409, 'AlreadyExists', `${qualified(plural, group)} "${name}" already exists`, { name, group, kind: plural });

export const conflict = (plural: string, group: string, name: string) =>
  new ApiError(
    409,
    'Conflict',
    `Operation cannot be fulfilled on ${qualified(plural, group)} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
    { name, group, kind: plural },
  );

export const invalid = (kind: string, group: string, name: string, causes: FieldCause[]) =>
  new ApiError(422, 'Invalid', `${kind}${group ? '.' + group : ''} "${name}" is invalid: ${causes.map((c) => `${c.field}: ${c.message}`).join(', ')}`, {
    name,
    group,
    kind,
    causes,
  });

export const gone = (message: string) => new ApiError(410, 'Expired', message);

/** A resourceVersion that is not a decimal integer: Kubernetes' versioner refuses it before anything else. */
export const invalidResourceVersion = (value: string, field = 'resourceVersion') =>
  new ApiError(
    400,
    'BadRequest',
    `${field}: Invalid value: ${JSON.stringify(value)}: must be a decimal integer (the metadata.resourceVersion of an earlier read)`,
    { causes: [{ reason: 'FieldValueInvalid', field, message: `Invalid value: ${JSON.stringify(value)}: must be a decimal integer` }] },
  );

/**
 * A read from a resourceVersion the store has not reached (kube's NewTooLargeResourceVersionError,
 * a Timeout): clients such as reflectors recognise it by the cause and retry.
 */
export const tooLargeResourceVersion = (wanted: number, current: number) =>
  new ApiError(504, 'Timeout', `Timeout: Too large resource version: ${wanted}, current: ${current}`, {
    causes: [{ reason: 'ResourceVersionTooLarge', message: 'Too large resource version' }],
    retryAfterSeconds: 1,
  });

export const forbidden = (message: string) => new ApiError(403, 'Forbidden', message);

export const unauthorized = () =>
  new ApiError(401, 'Unauthorized', 'Unauthorized: send "Authorization: Bearer <token>"; `vessel kubeconfig` prints a kubeconfig with a token');

export const methodNotAllowed = (method: string, path: string) =>
  new ApiError(405, 'MethodNotAllowed', `the server does not allow method ${method} on ${path}`);

export const unsupportedMediaType = (type: string) =>
  new ApiError(
    415,
    'UnsupportedMediaType',
    `the body of the request was in an unknown format: "${type}"; use application/json or application/yaml (patches: merge-patch+json, json-patch+json, strategic-merge-patch+json, apply-patch+yaml)`,
  );

export const tooLarge = (limit: number) => new ApiError(413, 'RequestEntityTooLarge', `the request body is larger than the limit of ${limit} bytes`);

/** Turns anything thrown while serving a request into an ApiError, mapping store errors. */
export function toApiError(err: unknown, plural = '', group = '', name = ''): ApiError {
  if (err instanceof ApiError) return err;
  if (isStoreError(err)) {
    switch (err.code) {
      case 'NotFound':
        return notFound(plural, group, name);
      case 'AlreadyExists':
        return alreadyExists(plural, group, name);
      case 'Conflict':
        return conflict(plural, group, name);
      case 'Gone':
        return gone(`too old resource version: ${err.message}`);
      case 'Unavailable':
        return new ApiError(503, 'ServiceUnavailable', `storage is unavailable: ${err.message}`, { retryAfterSeconds: 1 });
    }
  }
  const message = err instanceof Error ? err.message : String(err);
  return new ApiError(500, 'InternalError', `Internal error occurred: ${message}`);
}
