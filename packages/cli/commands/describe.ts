/**
 * `vessel describe TYPE [NAME...]`: a readable view of objects followed by their Events
 * (core v1 events whose involvedObject is the object), which is where controllers explain
 * what they did or why they could not.
 */
import type { Command } from 'commander';
import { migration } from '@vessel/api';
import { isStatusError, type Client, type KubeObject, type ResourceRef } from '@vessel/client';
import { contextOf, note, out } from '../context.ts';
import { reportError } from '../errors.ts';
import { describeEvents, describeObject } from '../printers/describe.ts';
import { formatMigrationProgress } from '../printers/migration-progress.ts';
import { resolveTargets, withTypeMeta } from '../targets.ts';

const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };

export function registerDescribe(program: Command): void {
  program
    .command('describe')
    .description('show objects in detail, with their events (e.g. `vessel describe vm demo`)')
    .argument('<type>', 'resource type, e.g. vm; or TYPE/NAME')
    .argument('[names...]', 'object names (all objects when none)')
    .option('-l, --selector <selector>', 'label selector (when no names are given)')
    .action(async (type: string, names: string[], opts: { selector?: string }, cmd: Command) => {
      const ctx = contextOf(cmd);
      const client = ctx.client();
      const namespace = ctx.namespace();
      let first = true;
      for (const { resource, names: wanted } of await resolveTargets(client, [type, ...names])) {
        const ns = resource.namespaced ? namespace : undefined;
        let objects: KubeObject[] = [];
        if (wanted.length === 0) {
          objects = (await client.list(resource, { namespace: ns, labelSelector: opts.selector })).items;
          if (objects.length === 0) note(`No resources found${ns ? ` in ${ns} namespace` : ''}.\n`);
        } else {
          for (const name of wanted) {
            try {
              objects.push(await client.get(resource, name, { namespace: ns }));
            } catch (e) {
              reportError(e);
            }
          }
        }
        for (const obj of objects) {
          if (!first) out('\n\n');
          first = false;
          out(describeObject(withTypeMeta(resource, obj)));
          // A live migration's last progress, readable (the annotation above is JSON).
          const progress = resource.plural === 'virtualmachineinstancemigrations' ? migration.progressOf(obj) : undefined;
          if (progress) out(`Progress:  ${formatMigrationProgress(progress)}\n`);
          out(describeEvents(await eventsFor(client, withTypeMeta(resource, obj))));
        }
      }
    });
}

/** Events about one object. Filtered by kind too: a VirtualMachine and its instance share a name. */
async function eventsFor(client: Client, obj: KubeObject): Promise<KubeObject[]> {
  const name = obj.metadata?.name ?? '';
  const namespace = obj.metadata?.namespace;
  const fieldSelector = [`involvedObject.name=${name}`, namespace ? `involvedObject.namespace=${namespace}` : ''].filter(Boolean).join(',');
  try {
    const list = await client.list(EVENTS, { namespace, fieldSelector });
    return list.items.filter((e) => {
      const involved = (e as { involvedObject?: { kind?: string; uid?: string } }).involvedObject;
      return (!involved?.kind || involved.kind === obj.kind) && (!involved?.uid || !obj.metadata?.uid || involved.uid === obj.metadata.uid);
    });
  } catch (e) {
    if (!isStatusError(e)) throw e;
    note(`Warning: cannot list events: ${e.message}\n`); // the object itself was shown; events are extra
    return [];
  }
}
