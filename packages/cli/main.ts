/**
 * Entry point of the `vessel` command (bin/vessel runs this with tsx). Errors are printed as
 * one readable message and exit code 1, never as a stack trace.
 */
import { reportError } from './errors.ts';
import { buildProgram } from './program.ts';

// `vessel get vms | head` closes our stdout early: that is not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

try {
  await buildProgram().parseAsync(process.argv);
} catch (e) {
  reportError(e);
}
