/**
 * `vessel image-upload dv NAME --image-path FILE --size 10Gi` (virtctl's verb): creates a
 * DataVolume with an upload source (unless it exists, or --no-create), waits until it is
 * UploadReady, and streams the file with a byte progress bar. A dropped connection resumes
 * where it broke off; running the same command again after a crash resumes too.
 */
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { isNotFound, type Client, type KubeObject, type ResourceRef } from '@vessel/client';
import { contextOf, note, out } from '../context.ts';
import { UsageError } from '../errors.ts';
import { ProgressBar } from '../printers/progress.ts';
import { uploadImage } from '../upload.ts';

const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };

interface Flags {
  imagePath?: string;
  size?: string;
  storageClass?: string;
  accessMode?: string;
  noCreate?: boolean;
  waitSecs: string;
  async?: boolean;
}

export function registerImageUpload(program: Command): void {
  program
    .command('image-upload')
    .description('upload a disk image (qcow2, raw, vmdk, vhd(x), iso; gz/xz) into a DataVolume')
    .argument('<kind>', 'dv (a DataVolume is created unless it exists)')
    .argument('<name>', 'DataVolume name')
    .requiredOption('--image-path <file>', 'the image file to upload')
    .option('--size <quantity>', 'size of the volume, e.g. 10Gi (needed unless the DataVolume exists)')
    .option('--storage-class <name>', 'storage class (default: the default class)')
    .option('--access-mode <mode>', 'access mode, e.g. ReadWriteOnce')
    .option('--no-create', 'upload into an existing DataVolume')
    .option('--wait-secs <n>', 'how long to wait for the volume to be ready for the upload', '300')
    .option('--async', 'return once the bytes are stored, before the import finishes')
    .action(async (kind: string, name: string, flags: Flags, cmd: Command) => {
      if (kind !== 'dv' && kind !== 'datavolume')
        throw new UsageError(`unknown kind "${kind}": use dv (e.g. vessel image-upload dv NAME --image-path FILE --size 10Gi)`);
      if (!existsSync(flags.imagePath!)) throw new UsageError(`--image-path ${flags.imagePath}: no such file`);
      const ctx = contextOf(cmd);
      const client = ctx.client();
      const namespace = ctx.namespace();
      await ensureUploadDataVolume(client, namespace, name, flags);
      note(`Waiting for DataVolume ${namespace}/${name} to be ready for the upload...\n`);
      await waitForPhase(client, namespace, name, ['UploadReady'], Number(flags.waitSecs) * 1000);
      const bar = new ProgressBar(`${name}:`);
      await uploadImage(client, {
        namespace,
        pvcName: name,
        file: flags.imagePath!,
        async: flags.async,
        onProgress: (sent, total) => bar.update(sent, total),
        onRetry: (e, from) => note(`\nupload interrupted (${e.message}); resuming from byte ${from}\n`),
      });
      bar.finish(`Uploading ${flags.imagePath} completed successfully`);
      out(`DataVolume ${namespace}/${name} ${flags.async ? 'received the upload; the import continues on the node' : 'is ready'}\n`);
    });
}

/** Creates the upload DataVolume, or checks that an existing one takes an upload. */
export async function ensureUploadDataVolume(
  client: Client,
  namespace: string,
  name: string,
  flags: { size?: string; storageClass?: string; accessMode?: string; noCreate?: boolean },
): Promise<KubeObject> {
  try {
    const dv = await client.get(DV, name, { namespace });
    const spec = (dv.spec ?? {}) as { source?: { upload?: unknown } };
    if (!spec.source?.upload)
      throw new UsageError(`DataVolume ${namespace}/${name} exists and is not filled by an upload (spec.source.upload): pick another name`);
    const phase = (dv.status as { phase?: string } | undefined)?.phase;
    if (phase === 'Succeeded') throw new UsageError(`DataVolume ${namespace}/${name} already holds an upload; delete it first to upload again`);
    return dv;
  } catch (e) {
    if (!isNotFound(e)) throw e;
  }
  if (flags.noCreate) throw new UsageError(`DataVolume ${namespace}/${name} does not exist (and --no-create was given)`);
  if (!flags.size) throw new UsageError('--size is required to create the DataVolume, e.g. --size 10Gi');
  return client.create(
    DV,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name, namespace },
      spec: {
        source: { upload: {} },
        storage: {
          resources: { requests: { storage: flags.size } },
          ...(flags.storageClass ? { storageClassName: flags.storageClass } : {}),
          ...(flags.accessMode ? { accessModes: [flags.accessMode] } : {}),
        },
      },
    },
    { namespace },
  );
}

/** Polls the DataVolume until its phase is one of `phases`; a Failed DataVolume throws with its reason. */
export async function waitForPhase(client: Client, namespace: string, name: string, phases: string[], timeoutMs: number): Promise<KubeObject> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dv = await client.get(DV, name, { namespace });
    const status = (dv.status ?? {}) as { phase?: string; conditions?: { type: string; message?: string }[] };
    if (status.phase && phases.includes(status.phase)) return dv;
    if (status.phase === 'Failed') {
      const why = status.conditions?.find((c) => c.type === 'Ready')?.message ?? 'see `vessel describe dv ' + name + '`';
      throw new Error(`DataVolume ${namespace}/${name} failed: ${why}`);
    }
    if (Date.now() > deadline)
      throw new Error(`DataVolume ${namespace}/${name} is still ${status.phase ?? 'Pending'} after ${timeoutMs / 1000}s: see \`vessel describe dv ${name}\``);
    await new Promise((r) => setTimeout(r, 300));
  }
}
