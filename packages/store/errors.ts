/** Store errors carry a stable code; the API server maps each to an HTTP Status. */

export type StoreErrorCode = 'NotFound' | 'AlreadyExists' | 'Conflict' | 'Gone' | 'Unavailable';

export class StoreError extends Error {
  readonly code: StoreErrorCode;
  readonly key?: string;
  constructor(code: StoreErrorCode, message: string, key?: string) {
    super(message);
    this.name = 'StoreError';
    this.code = code;
    this.key = key;
  }
}

export function isStoreError(err: unknown, code?: StoreErrorCode): err is StoreError {
  return err instanceof StoreError && (code === undefined || err.code === code);
}
