/**
 * `vessel inventory PROVIDER [vms|networks|datastores|hosts]`: a migration provider's inventory
 * (docs/forklift.md), read from the ConfigMap its controller publishes; a table, or -o json|yaml.
 */
import type { Command } from 'commander';
import { forklift } from '@vessel/api';
import type { ResourceRef } from '@vessel/client';
import { contextOf, out } from '../context.ts';
import { UsageError } from '../errors.ts';
import { toJson, toYaml } from '../printers/structured.ts';
import { renderRows } from '../printers/table.ts';

const CONFIGMAPS: ResourceRef = { group: '', version: 'v1', plural: 'configmaps', namespaced: true };
const PROVIDERS: ResourceRef = { group: 'forklift.konveyor.io', version: 'v1beta1', plural: 'providers', namespaced: true };

type Row = Record<string, unknown>;

const GiB = 1024 ** 3;
const COLUMNS: Record<forklift.InventoryKind, [string, (r: Row) => string][]> = {
  vms: [
    ['NAME', (r) => String(r.name)],
    ['ID', (r) => String(r.id)],
    ['CPUS', (r) => String(r.cpus)],
    ['MEMORY', (r) => `${r.memoryMB}Mi`],
    ['FIRMWARE', (r) => String(r.firmware)],
    ['DISKS', (r) => ((r.disks as Row[]) ?? []).map((d) => `${+(Number(d.capacity) / GiB).toFixed(2)}Gi`).join(',')],
    ['NETWORKS', (r) => ((r.nics as Row[]) ?? []).map((n) => n.network).join(',')],
    ['OS', (r) => String(r.osType)],
    ['SOURCE', (r) => String(r.source)],
  ],
  networks: [
    ['NAME', (r) => String(r.name)],
    ['ID', (r) => String(r.id)],
  ],
  datastores: [
    ['NAME', (r) => String(r.name)],
    ['ID', (r) => String(r.id)],
  ],
  hosts: [
    ['NAME', (r) => String(r.name)],
    ['ID', (r) => String(r.id)],
  ],
};

export function registerInventory(program: Command): void {
  program
    .command('inventory')
    .description("list a migration provider's inventory: vms (default), networks, datastores or hosts")
    .argument('<provider>', 'Provider name (forklift.konveyor.io)')
    .argument('[kind]', `${forklift.INVENTORY_KINDS.join('|')}|storage`, 'vms')
    .option('-o, --output <format>', 'json or yaml')
    .action(async (provider: string, kindArg: string, flags: { output?: string }, cmd: Command) => {
      // `storage` (the openshift provider's StorageClasses) is the datastores list.
      const kind = kindArg === 'storage' ? 'datastores' : kindArg;
      if (!(forklift.INVENTORY_KINDS as readonly string[]).includes(kind))
        throw new UsageError(`kind must be one of ${forklift.INVENTORY_KINDS.join(', ')}, not "${kind}"`);
      if (flags.output && flags.output !== 'json' && flags.output !== 'yaml') throw new UsageError(`--output must be json or yaml, not "${flags.output}"`);
      const ctx = contextOf(cmd);
      const client = ctx.client();
      const namespace = ctx.namespace();
      const p = await client.get(PROVIDERS, provider, { namespace });
      const phase = (p.status as { phase?: string } | undefined)?.phase;
      let cm;
      try {
        cm = await client.get(CONFIGMAPS, forklift.inventoryConfigMapName(provider), { namespace });
      } catch {
        throw new Error(`provider ${namespace}/${provider} has no inventory yet (phase ${phase ?? 'unknown'})`);
      }
      const text = (cm.data as Record<string, string> | undefined)?.[forklift.INVENTORY_KEY] ?? '{}';
      const rows = ((JSON.parse(text) as Record<string, unknown>)[kind] as Row[] | undefined) ?? [];
      if (flags.output === 'json') return out(toJson(rows));
      if (flags.output === 'yaml') return out(toYaml(rows));
      const cols = COLUMNS[kind as forklift.InventoryKind];
      out(renderRows([cols.map((c) => c[0]), ...rows.map((r) => cols.map((c) => c[1](r)))]));
    });
}
