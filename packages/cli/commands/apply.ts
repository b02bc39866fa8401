/**
 * `vessel apply -f FILE|DIR|-`: makes the server's objects match the manifests. Missing
 * objects are created; existing ones get kubectl's three-way merge patch (see merge-patch.ts),
 * so fields the manifest does not mention (finalizers, controller labels, status) survive.
 * The manifest is kept in the last-applied annotation, as kubectl does, so fields removed
 * from it are removed from the object on the next apply.
 */
import type { Command } from 'commander';
import { ClientError, isNotFound, isStatusError, qualifiedKind, StatusError, type ApiResource, type Client, type KubeObject } from '@vessel/client';
import { contextOf, out, type CliContext } from '../context.ts';
import { reportError, UsageError } from '../errors.ts';
import { readManifests, type Manifest } from '../manifests.ts';
import { isObject, type JsonObject } from '@vessel/api';
import { isEmptyPatch, threeWayMergePatch } from '../merge-patch.ts';

export const LAST_APPLIED = 'kubectl.kubernetes.io/last-applied-configuration';
const MAX_ATTEMPTS = 5;
/** Fields the server owns; a manifest saved from `get -o yaml` must not try to set them. */
const SERVER_METADATA = [
  'resourceVersion',
  'uid',
  'creationTimestamp',
  'generation',
  'managedFields',
  'selfLink',
  'deletionTimestamp',
  'deletionGracePeriodSeconds',
];

export type ApplyResult = 'created' | 'configured' | 'unchanged';

export function registerApply(program: Command): void {
  program
    .command('apply')
    .description('create or update objects from manifests (YAML or JSON; several documents per file allowed)')
    .requiredOption('-f, --filename <paths...>', 'files, directories, or - for stdin')
    .option('-R, --recursive', 'also read manifests in subdirectories')
    .action(async (opts: { filename: string[]; recursive?: boolean }, cmd: Command) => {
      const ctx = contextOf(cmd);
      const manifests = readManifests(opts.filename, { recursive: opts.recursive });
      if (manifests.length === 0) throw new UsageError(`no objects passed to apply: ${opts.filename.join(', ')} holds no manifests`);
      ctx.client(); // a missing kubeconfig fails once, not once per document
      for (const manifest of manifests) {
        try {
          const { resource, result } = await applyManifest(ctx, manifest);
          out(`${qualifiedKind(resource)}/${manifest.object.metadata?.name} ${result}\n`);
        } catch (e) {
          if (e instanceof ClientError && e.code === 'Unreachable') throw e; // the next documents would fail the same way
          reportError(e, manifest.source); // keep going: kubectl applies the other documents too
        }
      }
    });
}

async function applyManifest(ctx: CliContext, manifest: Manifest): Promise<{ resource: ApiResource; result: ApplyResult }> {
  const client = ctx.client();
  const { object } = manifest;
  const resource = await client.resolveKind(object.apiVersion as string, object.kind as string);
  let namespace: string | undefined;
  if (resource.namespaced) {
    const own = object.metadata?.namespace;
    if (own && ctx.namespaceGiven && own !== ctx.namespace()) {
      throw new UsageError(
        `the namespace from the provided object "${own}" does not match the namespace "${ctx.namespace()}": pass --namespace=${own} or remove metadata.namespace`,
      );
    }
    namespace = own ?? ctx.namespace();
  }
  return { resource, result: await applyObject(client, resource, object, namespace) };
}

/** Creates or patches one object; retries when someone else changed it in between. */
export async function applyObject(client: Client, resource: ApiResource, object: KubeObject, namespace: string | undefined): Promise<ApplyResult> {
  const modified = withLastApplied(object, namespace);
  const name = object.metadata?.name as string;
  for (let attempt = 1; ; attempt++) {
    const retry = (e: unknown) => attempt < MAX_ATTEMPTS && e instanceof StatusError && e.code === 409;
    let live: KubeObject;
    try {
      live = await client.get(resource, name, { namespace });
    } catch (e) {
      if (!isNotFound(e)) throw e;
      try {
        await client.create(resource, modified, { namespace });
        return 'created';
      } catch (createError) {
        if (isStatusError(createError, 'AlreadyExists') && retry(createError)) continue; // created meanwhile: patch it
        throw createError;
      }
    }
    const patch = threeWayMergePatch(lastApplied(live), modified as JsonObject, live as JsonObject);
    if (isEmptyPatch(patch)) return 'unchanged';
    try {
      await client.patch(resource, name, patch, { namespace, type: 'merge' });
      return 'configured';
    } catch (e) {
      if (!retry(e)) throw e;
    }
  }
}

/** The manifest as sent: no server-owned fields, no status, the namespace set, and itself recorded in the annotation. */
export function withLastApplied(object: KubeObject, namespace: string | undefined): KubeObject {
  const clean = structuredClone(object);
  delete clean.status;
  const metadata = { ...clean.metadata };
  for (const field of SERVER_METADATA) delete metadata[field];
  if (namespace) metadata.namespace = namespace;
  const annotations = { ...metadata.annotations };
  delete annotations[LAST_APPLIED];
  if (Object.keys(annotations).length > 0) metadata.annotations = annotations;
  else delete metadata.annotations;
  clean.metadata = metadata;
  const recorded = JSON.stringify(clean) + '\n';
  return { ...clean, metadata: { ...metadata, annotations: { ...annotations, [LAST_APPLIED]: recorded } } };
}

/** The manifest applied last time, or {} when the object was not made by apply. */
function lastApplied(live: KubeObject): JsonObject {
  const text = live.metadata?.annotations?.[LAST_APPLIED];
  if (!text) return {};
  try {
    const parsed = JSON.parse(text) as unknown;
    return isObject<JsonObject>(parsed) ? parsed : {};
  } catch {
    return {}; // a mangled annotation: behave as if the object was not applied before
  }
}
