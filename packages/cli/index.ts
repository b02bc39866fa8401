/**
 * @vessel/cli: the `vessel` command line, for embedding or tests; main.ts runs it.
 */
export { buildProgram } from './program.ts';
export { formatError, UsageError } from './errors.ts';
