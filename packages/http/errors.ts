/**
 * HttpError: the one error type that carries an HTTP code. The API server's ApiError extends
 * it with a Kubernetes Status reason; the agent's refusals (uploads, VM actions, consoles) are
 * HttpErrors, answered as JSON in one place (the agent endpoint).
 */

export class HttpError extends Error {
  /** The HTTP status code to answer with. */
  readonly code: number;
  constructor(code: number, message: string) {
    super(message);
    this.name = 'HttpError';
    this.code = code;
  }
}
