/**
 * `vessel create namespace NAME`: the one object worth creating without a manifest.
 */
import type { Command } from 'commander';
import type { ResourceRef } from '@vessel/client';
import { contextOf, out } from '../context.ts';

const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };

export function registerCreate(program: Command): void {
  const create = program.command('create').description('create an object without a manifest (use `apply -f` for manifests)');
  create
    .command('namespace')
    .alias('ns')
    .description('create a namespace')
    .argument('<name>', 'the namespace name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const client = contextOf(cmd).client();
      await client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
      out(`namespace/${name} created\n`);
    });
}
