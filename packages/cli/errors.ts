/**
 * How the CLI reports failures: one `Error: ...` line with the server's message (which names
 * the fields at fault), field causes the message leaves out, and never a stack trace unless
 * VESSEL_DEBUG is set.
 */
import { ClientError, StatusError } from '@vessel/client';

/** A mistake in how the command was used; the message says how to use it. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** The text printed for an error (without a trailing newline). `context` prefixes the message, e.g. a file name. */
export function formatError(err: unknown, context?: string): string {
  const prefix = context ? `${context}: ` : '';
  if (err instanceof StatusError) {
    const causes = err.causes.map((c) => (c.field ? `${c.field}: ${c.message ?? c.reason ?? ''}` : (c.message ?? ''))).filter(Boolean);
    // Several field errors read better one per line than joined into the message.
    const invalidAt = err.message.indexOf(' is invalid: ');
    if (causes.length > 1 && invalidAt >= 0 && causes.every((c) => err.message.includes(c))) {
      return [`Error: ${prefix}${err.message.slice(0, invalidAt)} is invalid:`, ...causes.map((c) => `  ${c}`)].join('\n');
    }
    return [`Error: ${prefix}${err.message}`, ...causes.filter((c) => !err.message.includes(c)).map((c) => `  ${c}`)].join('\n');
  }
  if (err instanceof ClientError || err instanceof UsageError) return `Error: ${prefix}${err.message}`;
  const message = err instanceof Error ? err.message : String(err);
  const debug = process.env.VESSEL_DEBUG && err instanceof Error && err.stack ? `\n${err.stack}` : '';
  return `Error: ${prefix}${message}${debug}`;
}

/** Prints an error to stderr and marks the process as failed (exit code 1), without exiting. */
export function reportError(err: unknown, context?: string): void {
  process.stderr.write(formatError(err, context) + '\n');
  process.exitCode = 1;
}
