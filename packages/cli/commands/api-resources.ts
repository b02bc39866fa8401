/**
 * `vessel api-resources`: the resource types the server serves, with the short names and
 * kinds `get`/`describe`/`delete` accept (read from discovery, like kubectl).
 */
import type { Command } from 'commander';
import { contextOf, out } from '../context.ts';
import { renderRows } from '../printers/table.ts';

export function registerApiResources(program: Command): void {
  program
    .command('api-resources')
    .description('list the resource types the server serves')
    .option('--namespaced <bool>', 'only namespaced (true) or cluster-scoped (false) types')
    .action(async (opts: { namespaced?: string }, cmd: Command) => {
      const resources = (await contextOf(cmd).client().discovery())
        .filter((r) => r.preferred)
        .filter((r) => opts.namespaced === undefined || String(r.namespaced) === opts.namespaced)
        .sort((a, b) => (a.group === '' ? 0 : 1) - (b.group === '' ? 0 : 1) || a.group.localeCompare(b.group) || a.plural.localeCompare(b.plural));
      out(
        renderRows([
          ['NAME', 'SHORTNAMES', 'APIVERSION', 'NAMESPACED', 'KIND'],
          ...resources.map((r) => [r.plural, r.shortNames.join(','), r.group ? `${r.group}/${r.version}` : r.version, String(r.namespaced), r.kind]),
        ]),
      );
    });
}
