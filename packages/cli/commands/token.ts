/**
 * `vessel token create NAME [--group G...]`: asks the server (as an admin) for a new bearer
 * token for user NAME and prints only the token, for `TOKEN=$(vessel token create ...)`.
 * The server keeps just its hash: the token cannot be shown again.
 */
import type { Command } from 'commander';
import { contextOf, out } from '../context.ts';

export function registerToken(program: Command): void {
  const token = program.command('token').description('manage bearer tokens');
  token
    .command('create')
    .description('create a token for a user and print it')
    .argument('<name>', 'the user name the token authenticates as')
    .option(
      '--group <group...>',
      'groups of the user: system:masters = admin, vessel:view = read-only (no Secrets), vessel:view:NS = read-only in NS, vessel:tenant:NS = owns NS',
      ['vessel:view'],
    )
    .option('--description <text>', 'a note stored with the token')
    .action(async (name: string, opts: { group: string[]; description?: string }, cmd: Command) => {
      const client = contextOf(cmd).client();
      const issued = await client.request<{ token: string }>('POST', '/vessel/v1/tokens', {
        body: { user: name, groups: opts.group, description: opts.description },
      });
      out(`${issued.token}\n`);
    });
}
