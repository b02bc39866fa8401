/**
 * The watchdog process (watchdog.ts): `node --import tsx watchdog-main.ts DIR VMS_ROOT`, started
 * detached by the agent. Exits when it has fired, expired or been disarmed.
 */
import { runWatchdog } from './watchdog.ts';

const [dir, vmsRoot] = process.argv.slice(2);
if (!dir || !vmsRoot) {
  console.error('usage: watchdog-main.ts DIR VMS_ROOT');
  process.exit(2);
}
// The agent's terminal or service manager may go away: nothing here should die with it.
process.on('SIGHUP', () => undefined);
await runWatchdog(dir, vmsRoot);
