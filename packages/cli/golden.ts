/**
 * The golden images `vessel up` provides: `tiny`, the test guest built from Debian packages
 * (guest/), published as the DataSource vessel-images/tiny every tenant can make VM disks
 * from: by a DataImportCron polling the local registry `vessel up` serves (ensureTinyCron), or
 * by upload (ensureTinyImage, what tests use); `debian` (guest/build-debian.sh) on request, by
 * upload.
 */
import { ensureDebianGuest, ensureTinyGuest } from '@vessel/guest';
import { isNotFound, type Client, type KubeObject, type ResourceRef } from '@vessel/client';
import { ensureUploadDataVolume, waitForPhase } from './commands/image-upload.ts';
import { uploadImage } from './upload.ts';
import { startLocalRegistry, type LocalRegistry } from './local-registry.ts';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const DATASOURCES: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datasources', namespaced: true };
const DATAIMPORTCRONS: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'dataimportcrons', namespaced: true };
const NAMESPACE = 'vessel-images';
/** CDI's annotations on a DataImportCron (packages/controllers/dataimportcron.ts). */
const ANN_NEXT_CRON_TIME = 'cdi.kubevirt.io/storage.import.nextCronTime';
const ANN_LAST_CRON_TIME = 'cdi.kubevirt.io/storage.import.lastCronTime';
const ANN_DESIRED_DIGEST = 'cdi.kubevirt.io/storage.import.sourceDesiredDigest';
const GOLDEN_LABEL = 'vessel.io/golden-image';

/** The DataImportCron that keeps vessel-images/tiny: the local registry's image, polled daily and on every `vessel up`. */
export function tinyCron(url: string, storageClass?: string): KubeObject {
  return {
    apiVersion: 'cdi.kubevirt.io/v1beta1',
    kind: 'DataImportCron',
    metadata: { name: 'tiny', namespace: NAMESPACE, labels: { [GOLDEN_LABEL]: 'true' } },
    spec: {
      schedule: '@daily',
      managedDataSource: 'tiny',
      importsToKeep: 2,
      template: {
        spec: {
          source: { registry: { url } },
          // A cluster of several nodes keeps it in the shared pool, where every node can clone it.
          storage: { ...(storageClass ? { storageClassName: storageClass } : {}), resources: { requests: { storage: '1Gi' } } },
        },
      },
    },
  };
}

interface CronView {
  url?: string;
  lastCronTime?: string;
  desired?: string;
  current?: string;
  lastImportedPVC?: string;
  upToDate?: { status?: string; reason?: string; message?: string };
}

function viewOf(o: KubeObject): CronView {
  const spec = o.spec as { template?: { spec?: { source?: { registry?: { url?: string } } } } } | undefined;
  const status = o.status as
    | {
        currentImports?: { Digest?: string }[];
        lastImportedPVC?: { name?: string };
        conditions?: { type: string; status?: string; reason?: string; message?: string }[];
      }
    | undefined;
  const a = o.metadata?.annotations ?? {};
  return {
    url: spec?.template?.spec?.source?.registry?.url,
    lastCronTime: a[ANN_LAST_CRON_TIME],
    desired: a[ANN_DESIRED_DIGEST],
    current: status?.currentImports?.[0]?.Digest,
    lastImportedPVC: status?.lastImportedPVC?.name,
    upToDate: status?.conditions?.find((c) => c.type === 'UpToDate'),
  };
}

/**
 * Builds (or finds cached) the tiny guest and serves it from the local registry as
 * vessel/tiny:latest, on the port it had last time under this data directory
 * (`local-registry.json`): the DataImportCron's URL names the port, and CDI's spec is immutable.
 * When that port is taken, any free one (ensureTinyCron then replaces the cron).
 */
export async function startTinyRegistry(dataDir: string, note: (line: string) => void): Promise<LocalRegistry> {
  note('building the tiny guest image (cached after the first time)...');
  const guest = await ensureTinyGuest();
  const state = join(dataDir, 'local-registry.json');
  const saved = await readFile(state, 'utf8').then(
    (t) => Number((JSON.parse(t) as { port?: unknown }).port) || 0,
    () => 0,
  );
  const start = (port: number) => startLocalRegistry({ disk: guest.disk, repository: 'vessel/tiny', tag: 'latest', port });
  const reg = await start(saved).catch((e: NodeJS.ErrnoException) => {
    if (saved && e.code === 'EADDRINUSE') return start(0);
    throw e;
  });
  if (reg.port !== saved) {
    await mkdir(dataDir, { recursive: true });
    await writeFile(state, `${JSON.stringify({ port: reg.port })}\n`);
  }
  return reg;
}

/**
 * Makes vessel-images/tiny come from DataImportCron vessel-images/tiny polling `url` (the
 * local registry). The cron is created, or made to poll now (its nextCronTime set to now, as
 * CDI's tests do), so a rebuilt guest is imported at once and an unchanged one is not; a cron
 * that names another URL (the registry could not get its port back) is replaced: its imports
 * stay and the new cron adopts the one of the same digest. Waits until the poll is done, the
 * import is UpToDate and the DataSource points at it. Returns whether this run imported.
 */
export async function ensureTinyCron(
  client: Client,
  note: (line: string) => void,
  url: string,
  opts: { timeoutMs?: number; storageClass?: string } = {},
): Promise<{ result: 'exists' | 'imported'; pvc: string; digest: string }> {
  const at = { namespace: NAMESPACE };
  let cron = await client.get(DATAIMPORTCRONS, 'tiny', at).catch((e: unknown) => {
    if (isNotFound(e)) return undefined;
    throw e;
  });
  if (cron && viewOf(cron).url !== url) {
    note(`the local registry moved to ${url}: replacing DataImportCron ${NAMESPACE}/tiny`);
    await client.delete(DATAIMPORTCRONS, 'tiny', at).catch((e: unknown) => {
      if (!isNotFound(e)) throw e;
    });
    const gone = Date.now() + 30_000;
    while (
      await client.get(DATAIMPORTCRONS, 'tiny', at).then(
        () => true,
        (e: unknown) => (isNotFound(e) ? false : Promise.reject(e)),
      )
    ) {
      if (Date.now() > gone) throw new Error(`DataImportCron ${NAMESPACE}/tiny was not deleted within 30 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
    cron = undefined;
  }
  // What the DataSource pointed at before: "imported" means this run moved it.
  const dsPvc = async () =>
    ((await client.get(DATASOURCES, 'tiny', at).catch(() => undefined))?.spec as { source?: { pvc?: { name?: string } } } | undefined)?.source?.pvc?.name;
  const before = await dsPvc();
  const triggered = new Date().toISOString();
  if (cron) {
    await client.patch(DATAIMPORTCRONS, 'tiny', { metadata: { annotations: { [ANN_NEXT_CRON_TIME]: triggered } } }, at);
  } else {
    note(`importing the tiny guest into vessel-images/tiny through DataImportCron ${NAMESPACE}/tiny (${url})...`);
    await client.create(DATAIMPORTCRONS, tinyCron(url, opts.storageClass), at);
  }
  const deadline = Date.now() + (opts.timeoutMs ?? 180_000);
  for (;;) {
    const v = viewOf(await client.get(DATAIMPORTCRONS, 'tiny', at));
    // Polled since now, that digest's import is the current one, it is up to date, and the DataSource follows.
    if (v.lastCronTime && v.lastCronTime >= triggered && v.desired && v.desired === v.current && v.upToDate?.status === 'True' && v.lastImportedPVC) {
      const ds = await client.get(DATASOURCES, 'tiny', at).catch(() => undefined);
      const pvc = (ds?.spec as { source?: { pvc?: { name?: string } } } | undefined)?.source?.pvc?.name;
      if (ds && pvc === v.lastImportedPVC) {
        if (ds.metadata?.labels?.[GOLDEN_LABEL] !== 'true') await client.patch(DATASOURCES, 'tiny', { metadata: { labels: { [GOLDEN_LABEL]: 'true' } } }, at);
        return { result: before === pvc ? 'exists' : 'imported', pvc, digest: v.desired };
      }
    }
    if (Date.now() > deadline) {
      throw new Error(
        `DataImportCron ${NAMESPACE}/tiny did not bring the tiny image in within ${(opts.timeoutMs ?? 180_000) / 1000} s (UpToDate: ${v.upToDate?.reason ?? 'none'}: ${v.upToDate?.message ?? ''}): kubectl describe dic tiny -n ${NAMESPACE}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Makes sure DataSource vessel-images/tiny exists and its volume holds the tiny guest, by upload (the e2e tests' quick way). Returns what it did. */
export async function ensureTinyImage(client: Client, note: (line: string) => void, opts: { storageClass?: string } = {}): Promise<'exists' | 'imported'> {
  let have = false;
  try {
    await client.get(DATASOURCES, 'tiny', { namespace: NAMESPACE });
    have = true;
  } catch (e) {
    if (!isNotFound(e)) throw e;
  }
  const dvPhase = await waitForPhase(client, NAMESPACE, 'tiny', ['Succeeded'], 0).then(
    () => 'Succeeded',
    () => undefined,
  );
  if (have && dvPhase === 'Succeeded') return 'exists';
  note('building the tiny guest image (cached after the first time)...');
  const guest = await ensureTinyGuest();
  // A cluster of several nodes keeps it in the shared pool, where every node can clone it.
  await ensureUploadDataVolume(client, NAMESPACE, 'tiny', { size: '1Gi', storageClass: opts.storageClass }).catch((e: Error) => {
    if (!/already holds an upload/.test(e.message)) throw e;
  });
  if (dvPhase !== 'Succeeded') {
    await waitForPhase(client, NAMESPACE, 'tiny', ['UploadReady', 'Succeeded'], 120_000);
    note('uploading the tiny guest into vessel-images/tiny...');
    await uploadImage(client, { namespace: NAMESPACE, pvcName: 'tiny', file: guest.disk });
    await waitForPhase(client, NAMESPACE, 'tiny', ['Succeeded'], 120_000);
  }
  if (!have) {
    await client.create(
      DATASOURCES,
      {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataSource',
        metadata: { name: 'tiny', namespace: NAMESPACE, labels: { 'vessel.io/golden-image': 'true' } },
        spec: { source: { pvc: { name: 'tiny', namespace: NAMESPACE } } },
      },
      { namespace: NAMESPACE },
    );
  }
  return 'imported';
}

/**
 * Makes sure DataSource vessel-images/debian exists and its volume holds the Debian guest
 * (guest/build-debian.sh: a few minutes the first time on a machine, then cached).
 */
export async function ensureDebianImage(client: Client, note: (line: string) => void, opts: { storageClass?: string } = {}): Promise<'exists' | 'imported'> {
  const name = 'debian';
  let have = false;
  try {
    await client.get(DATASOURCES, name, { namespace: NAMESPACE });
    have = true;
  } catch (e) {
    if (!isNotFound(e)) throw e;
  }
  const dvPhase = await waitForPhase(client, NAMESPACE, name, ['Succeeded'], 0).then(
    () => 'Succeeded',
    () => undefined,
  );
  if (have && dvPhase === 'Succeeded') return 'exists';
  note('building the Debian guest image (cached after the first time)...');
  const guest = await ensureDebianGuest();
  await ensureUploadDataVolume(client, NAMESPACE, name, { size: '3Gi', storageClass: opts.storageClass }).catch((e: Error) => {
    if (!/already holds an upload/.test(e.message)) throw e;
  });
  if (dvPhase !== 'Succeeded') {
    await waitForPhase(client, NAMESPACE, name, ['UploadReady', 'Succeeded'], 120_000);
    note('uploading the Debian guest into vessel-images/debian...');
    await uploadImage(client, { namespace: NAMESPACE, pvcName: name, file: guest.disk });
    await waitForPhase(client, NAMESPACE, name, ['Succeeded'], 600_000);
  }
  if (!have) {
    await client.create(
      DATASOURCES,
      {
        apiVersion: 'cdi.kubevirt.io/v1beta1',
        kind: 'DataSource',
        metadata: { name, namespace: NAMESPACE, labels: { 'vessel.io/golden-image': 'true' } },
        spec: { source: { pvc: { name, namespace: NAMESPACE } } },
      },
      { namespace: NAMESPACE },
    );
  }
  return 'imported';
}
