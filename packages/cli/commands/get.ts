/**
 * `vessel get TYPE[,TYPE...] [NAME...]`: lists or fetches objects. The default output is the
 * server's own Table (the columns each kind defines) printed like kubectl; -o yaml|json|name
 * print the objects. -w keeps printing rows as watch events arrive.
 */
import type { Command } from 'commander';
import {
  isTable,
  qualifiedKind,
  resourcePath,
  StatusError,
  TABLE_ACCEPT,
  type ApiResource,
  type Client,
  type KubeObject,
  type Status,
  type Table,
  type WatchEvent,
} from '@vessel/client';
import { contextOf, note, out } from '../context.ts';
import { reportError, UsageError } from '../errors.ts';
import { formatObjects, objectName, toJson, toYaml, asList, type StructuredFormat } from '../printers/structured.ts';
import { asTable, renderTable, tableCells, TableWriter } from '../printers/table.ts';
import { resolveTargets, withTypeMeta, type Target } from '../targets.ts';

interface GetOptions {
  output?: string;
  watch?: boolean;
  watchOnly?: boolean;
  selector?: string;
  fieldSelector?: string;
  allNamespaces?: boolean;
  /** false with --no-headers (commander's negatable option). */
  headers?: boolean;
  showManagedFields?: boolean;
}

const FORMATS = ['', 'wide', 'yaml', 'json', 'name'];

export function registerGet(program: Command): void {
  program
    .command('get')
    .description('list objects, or show some by name (e.g. `vessel get vm`, `vessel get vm demo -o yaml`)')
    .argument('<type>', 'resource type(s), comma separated: vm, virtualmachines, vm.kubevirt.io, all; or TYPE/NAME')
    .argument('[names...]', 'object names (all objects when none)')
    .option('-o, --output <format>', 'wide, yaml, json or name (default: a table)')
    .option('-w, --watch', 'after listing, keep printing changes')
    .option('--watch-only', 'print changes only, not the current objects')
    .option('-l, --selector <selector>', 'label selector, e.g. app=web,tier!=db')
    .option('--field-selector <selector>', 'field selector, e.g. metadata.name=demo')
    .option('-A, --all-namespaces', 'list across all namespaces')
    .option('--no-headers', 'omit the table header')
    .option('--show-managed-fields', 'keep metadata.managedFields in yaml and json output (hidden by default, as kubectl does)')
    .action(async (type: string, names: string[], opts: GetOptions, cmd: Command) => {
      const format = opts.output ?? '';
      if (!FORMATS.includes(format)) {
        throw new UsageError(`unknown output format "${format}": use one of ${FORMATS.filter(Boolean).join(', ')}`);
      }
      const ctx = contextOf(cmd);
      const client = ctx.client();
      const targets = await resolveTargets(client, [type, ...names]);
      if (opts.allNamespaces && targets.some((t) => t.names.length > 0 && t.resource.namespaced)) {
        throw new UsageError('an object cannot be fetched by name across all namespaces: drop -A, or pass -n NAMESPACE');
      }
      const namespace = opts.allNamespaces ? undefined : ctx.namespace();
      if (opts.watch || opts.watchOnly) {
        await watchTarget(client, targets, namespace, format, opts);
      } else if (format === 'yaml' || format === 'json' || format === 'name') {
        await printStructured(client, targets, namespace, format, opts);
      } else {
        await printTables(client, targets, namespace, format === 'wide', opts);
      }
    });
}

function listQuery(opts: GetOptions, extraFieldSelector?: string) {
  const fieldSelector = [opts.fieldSelector, extraFieldSelector].filter(Boolean).join(',') || undefined;
  return { labelSelector: opts.selector, fieldSelector };
}

function noResourcesMessage(targets: Target[], namespace: string | undefined): string {
  return namespace && targets.some((t) => t.resource.namespaced) ? `No resources found in ${namespace} namespace.\n` : 'No resources found\n';
}

/** Default and -o wide: one table per type, separated by blank lines, names prefixed when several types. */
async function printTables(client: Client, targets: Target[], namespace: string | undefined, wide: boolean, opts: GetOptions): Promise<void> {
  let printed = false;
  let listed = false;
  for (const { resource, names } of targets) {
    const ns = resource.namespaced ? namespace : undefined;
    let table: Table;
    if (names.length === 0) {
      listed = true;
      table = asTable(
        await client.request('GET', resourcePath(resource, ns), {
          query: { ...listQuery(opts), includeObject: 'Metadata' },
          accept: TABLE_ACCEPT,
        }),
      );
    } else {
      table = await tableOfNames(client, resource, ns, names);
    }
    const text = renderTable(table, {
      wide,
      withNamespace: opts.allNamespaces && resource.namespaced,
      kindPrefix: targets.length > 1 ? qualifiedKind(resource) : undefined,
      noHeaders: opts.headers === false,
    });
    if (!text) continue;
    if (printed) out('\n');
    out(text);
    printed = true;
  }
  if (!printed && listed && !process.exitCode) note(noResourcesMessage(targets, namespace));
}

/** One table with a row per named object; missing names are reported and skipped. */
async function tableOfNames(client: Client, resource: ApiResource, namespace: string | undefined, names: string[]): Promise<Table> {
  let merged: Table | undefined;
  for (const name of names) {
    try {
      const table = asTable(
        await client.request('GET', resourcePath(resource, namespace, name), {
          query: { includeObject: 'Metadata' },
          accept: TABLE_ACCEPT,
        }),
      );
      if (!merged) merged = table;
      else merged.rows.push(...table.rows);
    } catch (e) {
      reportError(e);
    }
  }
  return merged ?? { kind: 'Table', columnDefinitions: [], rows: [] };
}

/** -o yaml|json|name. One object named on the command line prints as itself, otherwise a List. */
async function printStructured(client: Client, targets: Target[], namespace: string | undefined, format: StructuredFormat, opts: GetOptions): Promise<void> {
  const objects: KubeObject[] = [];
  let listed = false;
  for (const { resource, names } of targets) {
    const ns = resource.namespaced ? namespace : undefined;
    const found: KubeObject[] = [];
    if (names.length === 0) {
      listed = true;
      const list = await client.list(resource, { namespace: ns, ...listQuery(opts) });
      found.push(...list.items.map((item) => printable(resource, item, opts)));
    } else {
      for (const name of names) {
        try {
          found.push(printable(resource, await client.get(resource, name, { namespace: ns }), opts));
        } catch (e) {
          reportError(e);
        }
      }
    }
    if (format === 'name') out(formatObjects('name', resource, found, false));
    else objects.push(...found);
  }
  if (format === 'name') return;
  const single = !listed && targets.length === 1 && targets[0].names.length === 1;
  if (single && objects.length === 0) return; // the one named object was missing; already reported
  out(format === 'yaml' ? toYaml(single ? objects[0] : asList(objects)) : toJson(single ? objects[0] : asList(objects)));
}

/**
 * -w / --watch-only: list (unless watch-only), then watch from the list's resourceVersion
 * and print each change. Tables come from the server when it sends Table watch events;
 * otherwise the changed object is fetched as a Table.
 */
async function watchTarget(client: Client, targets: Target[], namespace: string | undefined, format: string, opts: GetOptions): Promise<void> {
  if (targets.length !== 1) throw new UsageError('watch is only supported on one resource type at a time');
  const [{ resource, names }] = targets;
  if (names.length > 1) throw new UsageError('watch is only supported on one object at a time: give one name or none');
  const ns = resource.namespaced ? namespace : undefined;
  const path = resourcePath(resource, ns);
  const query = listQuery(opts, names.length === 1 ? `metadata.name=${names[0]}` : undefined);
  const structured = format === 'yaml' || format === 'json' || format === 'name';

  const writer = new TableWriter(out);
  let columns: Table['columnDefinitions'] = [];
  let headerPrinted = false;
  let documents = 0;
  /** Rows last printed per object, to show a DELETED object when the server sends no Table for it. */
  const lastRows = new Map<string, Table['rows'][number]>();
  const tableOptions = { wide: format === 'wide', withNamespace: opts.allNamespaces && resource.namespaced };

  const printTable = (table: Table) => {
    if (table.columnDefinitions.length > 0) columns = table.columnDefinitions;
    const { header, rows } = tableCells({ ...table, columnDefinitions: columns }, tableOptions);
    if (rows.length === 0) return;
    for (const row of table.rows) if (row.object?.metadata?.name) lastRows.set(keyOf(row.object), row);
    writer.writeRows(headerPrinted || opts.headers === false ? rows : [header, ...rows]);
    headerPrinted = true;
  };
  const printObject = (obj: KubeObject) => {
    if (format === 'name') return out(objectName(resource, obj) + '\n');
    if (format === 'yaml') out((documents++ > 0 ? '---\n' : '') + toYaml(printable(resource, obj, opts)));
    else out(toJson(printable(resource, obj, opts)));
  };

  let resourceVersion: string | undefined;
  if (structured) {
    const list = await client.list(resource, { namespace: ns, ...query });
    resourceVersion = list.metadata?.resourceVersion;
    if (!opts.watchOnly) list.items.forEach(printObject);
  } else {
    const table = asTable(await client.request('GET', path, { query: { ...query, includeObject: 'Metadata' }, accept: TABLE_ACCEPT }));
    resourceVersion = table.metadata?.resourceVersion;
    columns = table.columnDefinitions;
    if (!opts.watchOnly) printTable(table);
  }

  // Events are handled in order even when one needs a request (the Table fallback).
  let queue = Promise.resolve();
  let failed: unknown;
  const handle = async (event: WatchEvent<KubeObject | Table>) => {
    if (event.type === 'ERROR') throw new StatusError(event.object as unknown as Status, (event.object as unknown as Status).code ?? 500);
    const rv = isTable(event.object)
      ? (event.object.metadata?.resourceVersion ?? event.object.rows[0]?.object?.metadata?.resourceVersion)
      : event.object.metadata?.resourceVersion;
    if (rv) resourceVersion = rv;
    if (event.type === 'BOOKMARK') return;
    if (structured) {
      printObject(event.object as KubeObject);
    } else if (isTable(event.object)) {
      printTable(event.object);
    } else {
      printTable(await rowFor(client, resource, event, lastRows));
    }
  };

  // Servers end watches after a while; carry on from the last version seen, as kubectl does.
  for (;;) {
    const started = Date.now();
    const watch = client.watch<KubeObject | Table>(
      path,
      {
        ...query,
        resourceVersion,
        allowWatchBookmarks: true,
        ...(structured ? {} : { includeObject: 'Metadata' }),
      },
      (event) => {
        queue = queue
          .then(() => handle(event))
          .catch((e: unknown) => {
            failed = e;
            watch.close();
          });
      },
      { accept: structured ? undefined : TABLE_ACCEPT },
    );
    await watch.done;
    await queue;
    if (failed) throw failed;
    if (Date.now() - started < 1000) await new Promise((r) => setTimeout(r, 1000)); // do not spin on a server that closes at once
  }
}

function keyOf(obj: KubeObject): string {
  return `${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`;
}

/** A Table for a watch event that carried a plain object. */
async function rowFor(
  client: Client,
  resource: ApiResource,
  event: WatchEvent<KubeObject | Table>,
  lastRows: Map<string, Table['rows'][number]>,
): Promise<Table> {
  const obj = event.object as KubeObject;
  const previous = lastRows.get(keyOf(obj));
  if (event.type !== 'DELETED') {
    try {
      return asTable(
        await client.request('GET', resourcePath(resource, obj.metadata?.namespace, obj.metadata?.name), {
          query: { includeObject: 'Metadata' },
          accept: TABLE_ACCEPT,
        }),
      );
    } catch (e) {
      if (!(e instanceof StatusError && e.code === 404)) throw e; // gone since: print what we knew
    }
  }
  return { kind: 'Table', columnDefinitions: [], rows: previous ? [previous] : asTable(obj).rows };
}

/** An object as -o yaml|json print it: with apiVersion and kind, and without managedFields unless asked (as kubectl). */
function printable(resource: ApiResource, obj: KubeObject, opts: GetOptions): KubeObject {
  const typed = withTypeMeta(resource, obj);
  if (opts.showManagedFields || !typed.metadata?.managedFields) return typed;
  const { managedFields: _m, ...metadata } = typed.metadata;
  return { ...typed, metadata };
}
