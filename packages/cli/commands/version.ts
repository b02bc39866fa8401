/**
 * `vessel version`: the client's version (the repository's package.json) and the server's
 * (GET /version), so a mismatch is easy to spot.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { contextOf, out } from '../context.ts';
import { UsageError } from '../errors.ts';
import { toJson, toYaml } from '../printers/structured.ts';

/** The version in the repository root's package.json ('0.0.0-dev' while it has none). */
export function clientVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string };
  return pkg.version ?? '0.0.0-dev';
}

export function registerVersion(program: Command): void {
  program
    .command('version')
    .description("print the client's and the server's versions")
    .option('--client', 'only the client version (no server needed)')
    .option('-o, --output <format>', 'yaml or json')
    .action(async (opts: { client?: boolean; output?: string }, cmd: Command) => {
      if (opts.output && opts.output !== 'yaml' && opts.output !== 'json') throw new UsageError(`unknown output format "${opts.output}": use yaml or json`);
      const client = { gitVersion: `v${clientVersion()}`, platform: `${process.platform}/${process.arch}`, nodeVersion: process.version };
      // Print the client version before asking the server, so it shows even when the server is down.
      if (!opts.output) out(`Client Version: ${client.gitVersion}\n`);
      if (opts.client) {
        if (opts.output) out(opts.output === 'json' ? toJson({ clientVersion: client }) : toYaml({ clientVersion: client }));
        return;
      }
      const server = await contextOf(cmd).client().serverVersion();
      if (opts.output)
        out(opts.output === 'json' ? toJson({ clientVersion: client, serverVersion: server }) : toYaml({ clientVersion: client, serverVersion: server }));
      else out(`Server Version: ${server.gitVersion ?? JSON.stringify(server)}\n`);
    });
}
