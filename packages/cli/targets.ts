/**
 * Turning `get`/`describe`/`delete` arguments into resource types and names, as kubectl reads
 * them: `TYPE[,TYPE...] [NAME...]` or `TYPE/NAME...`, where TYPE is any name discovery knows
 * (plural, singular, kind, short name, optionally `.group`) or a category such as `all`.
 */
import type { ApiResource, Client, KubeObject } from '@vessel/client';
import { UsageError } from './errors.ts';

export interface Target {
  resource: ApiResource;
  /** Empty = every object of the type. */
  names: string[];
}

export async function resolveTargets(client: Client, args: string[]): Promise<Target[]> {
  if (args.length === 0) throw new UsageError('you must specify the type of resource, e.g. `vm`; `vessel api-resources` lists the types');
  if (args[0].includes('/')) {
    const targets: Target[] = [];
    for (const arg of args) {
      const slash = arg.indexOf('/');
      if (slash <= 0 || slash === arg.length - 1) {
        throw new UsageError(`"${arg}" is not TYPE/NAME: use TYPE/NAME for every argument (vm/demo), or TYPE NAME... (vm demo)`);
      }
      const resource = await client.resolve(arg.slice(0, slash));
      const existing = targets.find((t) => t.resource === resource);
      if (existing) existing.names.push(arg.slice(slash + 1));
      else targets.push({ resource, names: [arg.slice(slash + 1)] });
    }
    return targets;
  }
  const [types, ...names] = args;
  const targets: Target[] = [];
  for (const type of types.split(',').filter(Boolean)) {
    for (const resource of await client.resolveMany(type)) {
      if (!targets.some((t) => t.resource === resource)) targets.push({ resource, names: [...names] });
    }
  }
  return targets;
}

/** Lists omit apiVersion/kind on items for built-in types; -o yaml/json should show them. */
export function withTypeMeta(resource: ApiResource, obj: KubeObject): KubeObject {
  if (obj.apiVersion && obj.kind) return obj;
  const apiVersion = resource.group ? `${resource.group}/${resource.version}` : resource.version;
  return { apiVersion, kind: resource.kind, ...obj };
}
