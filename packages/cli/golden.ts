/**
 * The golden images `vessel up` provides: today `tiny`, the test guest built from Debian
 * packages (guest/), uploaded into a DataVolume in vessel-images and published as the
 * DataSource every tenant can make VM disks from; `debian` (guest/build-debian.sh) on request.
 */
import { ensureDebianGuest, ensureTinyGuest } from '@vessel/guest';
import { isNotFound, type Client, type ResourceRef } from '@vessel/client';
import { ensureUploadDataVolume, waitForPhase } from './commands/image-upload.ts';
import { uploadImage } from './upload.ts';

const DATASOURCES: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datasources', namespaced: true };
const NAMESPACE = 'vessel-images';

/** Makes sure DataSource vessel-images/tiny exists and its volume holds the tiny guest. Returns what it did. */
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
