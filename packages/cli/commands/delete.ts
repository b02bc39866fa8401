/**
 * `vessel delete TYPE NAME...` / `vessel delete -f FILE`: deletes objects. An object with
 * finalizers lingers until its controller finishes; --wait waits for it to be gone.
 */
import type { Command } from 'commander';
import { isNotFound, qualifiedKind, type ApiResource, type Client } from '@vessel/client';
import { contextOf, out } from '../context.ts';
import { reportError, UsageError } from '../errors.ts';
import { readManifests } from '../manifests.ts';
import { resolveTargets } from '../targets.ts';

interface DeleteOptions {
  filename?: string[];
  recursive?: boolean;
  wait?: boolean;
  timeout: string;
  ignoreNotFound?: boolean;
}

interface Victim {
  resource: ApiResource;
  name: string;
  namespace?: string;
}

export function registerDelete(program: Command): void {
  program
    .command('delete')
    .description('delete objects by type and name, or those in manifests (-f)')
    .argument('[type]', 'resource type, e.g. vm; or TYPE/NAME')
    .argument('[names...]', 'object names')
    .option('-f, --filename <paths...>', 'delete the objects in these files, directories, or - for stdin')
    .option('-R, --recursive', 'with -f, also read subdirectories')
    .option('--wait', 'wait until the objects are gone (finalizers done)')
    .option('--timeout <duration>', 'how long --wait waits, e.g. 30s, 2m', '60s')
    .option('--ignore-not-found', 'treat objects that do not exist as deleted')
    .action(async (type: string | undefined, names: string[], opts: DeleteOptions, cmd: Command) => {
      const ctx = contextOf(cmd);
      const client = ctx.client();
      const timeoutMs = parseDuration(opts.timeout);
      const victims: Victim[] = [];
      if (opts.filename) {
        if (type) throw new UsageError('give either -f or TYPE NAME..., not both');
        for (const { object } of readManifests(opts.filename, { recursive: opts.recursive })) {
          const resource = await client.resolveKind(object.apiVersion as string, object.kind as string);
          const namespace = resource.namespaced ? (object.metadata?.namespace ?? ctx.namespace()) : undefined;
          victims.push({ resource, name: object.metadata?.name as string, namespace });
        }
      } else {
        if (!type) throw new UsageError('say what to delete: `vessel delete TYPE NAME...` or `vessel delete -f FILE`');
        for (const target of await resolveTargets(client, [type, ...names])) {
          if (target.names.length === 0) throw new UsageError(`no name given: \`vessel delete ${type} NAME...\``);
          const namespace = target.resource.namespaced ? ctx.namespace() : undefined;
          victims.push(...target.names.map((name) => ({ resource: target.resource, name, namespace })));
        }
      }

      const deleted: Victim[] = [];
      for (const victim of victims) {
        try {
          await client.delete(victim.resource, victim.name, { namespace: victim.namespace });
          out(`${qualifiedKind(victim.resource)} "${victim.name}" deleted\n`);
          deleted.push(victim);
        } catch (e) {
          if (opts.ignoreNotFound && isNotFound(e)) continue;
          reportError(e);
        }
      }
      if (opts.wait) {
        const deadline = Date.now() + timeoutMs;
        for (const victim of deleted) {
          try {
            await waitUntilGone(client, victim, deadline);
          } catch (e) {
            reportError(e);
          }
        }
      }
    });
}

/** Polls until the object is gone; on timeout says what is holding it (its finalizers). */
async function waitUntilGone(client: Client, victim: Victim, deadline: number): Promise<void> {
  for (let delay = 100; ; delay = Math.min(delay * 2, 1000)) {
    let finalizers: string[] = [];
    try {
      const live = await client.get(victim.resource, victim.name, { namespace: victim.namespace });
      finalizers = live.metadata?.finalizers ?? [];
    } catch (e) {
      if (isNotFound(e)) return;
      throw e;
    }
    if (Date.now() >= deadline) {
      const why = finalizers.length > 0 ? `it still has finalizers ${finalizers.join(', ')}: is its controller running?` : 'it still exists';
      throw new Error(`timed out waiting for ${qualifiedKind(victim.resource)} "${victim.name}" to be deleted: ${why}`);
    }
    await new Promise((r) => setTimeout(r, Math.min(delay, Math.max(0, deadline - Date.now()))));
  }
}

/** '500ms', '30s', '2m', '1h', or plain seconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new UsageError(`invalid duration "${text}": use e.g. 30s, 2m or 500ms`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  return Number(m[1]) * unit;
}
