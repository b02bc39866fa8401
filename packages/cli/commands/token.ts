/**
 * `vessel token create NAME [--group G...] [--data-dir DIR]`: makes a bearer token for a user,
 * as a local admin action on the server's data directory (like `k3s token`), so it works
 * before any kubeconfig exists. Prints only the token, for `TOKEN=$(vessel token create ...)`.
 */
import type { Command } from 'commander';
import { defaultDataDir } from '@vessel/client';
import { out } from '../context.ts';

/** What the server package offers for this; loaded on demand (see loadCreateToken). */
type CreateTokenInDataDir = (dataDir: string, user: string, groups: string[]) => Promise<string>;

export function registerToken(program: Command): void {
  const token = program.command('token').description('manage bearer tokens (local admin action on a data directory)');
  token.command('create')
    .description('create a token for a user and print it')
    .argument('<name>', 'the user name the token authenticates as')
    .option('--group <group...>', 'groups of the user: system:masters = admin, vessel:view = read-only', [])
    .option('--data-dir <dir>', 'the server data directory (default: $VESSEL_DATA_DIR or /var/lib/vessel)')
    .action(async (name: string, opts: { group: string[]; dataDir?: string }) => {
      const createTokenInDataDir = await loadCreateToken();
      out(`${await createTokenInDataDir(opts.dataDir ?? defaultDataDir(), name, opts.group)}\n`);
    });
}

/** Imported on demand so other commands do not load the server (and its native store modules). */
async function loadCreateToken(): Promise<CreateTokenInDataDir> {
  const server = await import('@vessel/apiserver');
  // Checked at run time while the server package does not export it yet.
  if (!('createTokenInDataDir' in server)) throw new Error('this build of @vessel/apiserver has no createTokenInDataDir: update the server package');
  return server.createTokenInDataDir as CreateTokenInDataDir;
}
