/**
 * What the controller does with a `vsphere` provider: connect with the provider's Secret
 * (`user`, `password`, `cacert` or `insecureSkipVerify: "true"`, Forklift's keys), power a source
 * VM off for a cold migration, and open a disk's bytes through the datastore's `/folder` HTTP
 * interface. A disk's `.vmdk` is usually a text descriptor naming its data extent
 * (`…-flat.vmdk`, raw): the extent is downloaded; a single-file (sparse) VMDK is downloaded as
 * is; the importer behind the upload endpoint sniffs the format either way.
 */
import { Readable } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import { parseDatastorePath, VsphereClient, VsphereError } from './soap.ts';
import type { VsphereVm } from './inventory.ts';

export interface VsphereSecret {
  user: string;
  password: string;
  cacert?: string;
  insecureSkipVerify: boolean;
}

/** The Secret's `data` (base64) read as Forklift reads it; VsphereError SecretNotValid when user or password is missing. */
export function parseSecret(data: Record<string, string> | undefined): VsphereSecret {
  const get = (k: string): string | undefined => (data?.[k] !== undefined ? Buffer.from(data[k], 'base64').toString('utf8') : undefined);
  const user = get('user');
  const password = get('password');
  if (!user || password === undefined) throw new VsphereError('SecretNotValid', 'the secret needs `user` and `password`');
  const cacert = get('cacert');
  return { user, password, ...(cacert ? { cacert } : {}), insecureSkipVerify: get('insecureSkipVerify') === 'true' };
}

/** A logged-in client for the provider's URL (`https://host/sdk`; a bare host gets `/sdk`). */
export async function connect(url: string, secret: VsphereSecret): Promise<VsphereClient> {
  const u = new URL(url);
  if (u.pathname === '/' || !u.pathname) u.pathname = '/sdk';
  const client = new VsphereClient(u.toString(), { cacert: secret.cacert, insecureSkipVerify: secret.insecureSkipVerify });
  try {
    await client.login(secret.user, secret.password);
    return client;
  } catch (e) {
    client.close();
    throw e;
  }
}

/** Powers the VM off (PowerOffVM_Task, waited for) unless it is already off. */
export async function powerOff(client: VsphereClient, vmId: string): Promise<boolean> {
  const vm = { type: 'VirtualMachine', value: vmId };
  const state = (await client.retrieve(vm, ['runtime.powerState']))?.props.get('runtime.powerState')?.text.trim();
  if (state === undefined) throw new VsphereError('NotFound', `VM ${vmId} is no longer in the inventory`);
  if (state === 'poweredOff') return false;
  await client.runTask('PowerOffVM_Task', vm);
  return true;
}

/** A disk's bytes to stream: their size and the response to read them from. */
export interface DiskStream {
  size: number;
  stream: Readable;
  /** The datastore file the bytes come from. */
  file: string;
}

const DESCRIPTOR_MAX = 64 * 1024;

/** The data file a VMDK text descriptor names when it has exactly one FLAT (or VMFS) extent; undefined otherwise. */
export function flatExtent(descriptor: string): string | undefined {
  if (!/^# Disk DescriptorFile/m.test(descriptor)) return undefined;
  const extents = [...descriptor.matchAll(/^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]+)"/gm)];
  if (extents.length !== 1 || !['FLAT', 'VMFS'].includes(extents[0][3])) return undefined;
  const name = extents[0][4];
  // Only a file beside the descriptor: a name with a path could read elsewhere on the datastore.
  return name.includes('/') || name.includes('\\') || name === '..' ? undefined : name;
}

async function readSmall(res: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Opens disk `i` of `vm`: the descriptor's flat extent, or the `.vmdk` itself when it is not a descriptor. */
export async function openDisk(client: VsphereClient, vm: VsphereVm, i: number, datastoreName: (id: string) => string | undefined): Promise<DiskStream> {
  const disk = vm.disks[i];
  const where = parseDatastorePath(disk.file);
  if (!where) throw new VsphereError('NotFound', `disk ${disk.file} is not a datastore path`);
  const ds = datastoreName(disk.datastore ?? '') ?? where.datastore;
  const dir = where.path.includes('/') ? where.path.slice(0, where.path.lastIndexOf('/') + 1) : '';
  const get = async (path: string): Promise<IncomingMessage> => {
    const res = await client.download(vm.datacenter, ds, path);
    if (res.statusCode !== 200) {
      res.resume();
      throw new VsphereError('NotFound', `GET [${ds}] ${path}: HTTP ${res.statusCode}`);
    }
    return res;
  };
  // The upload endpoint needs the length up front.
  const sizeOf = (res: IncomingMessage): number => {
    const n = Number(res.headers['content-length'] ?? NaN);
    if (!Number.isSafeInteger(n) || n < 0) throw new VsphereError('BadReply', `${disk.file}: no Content-Length`);
    return n;
  };
  let res: IncomingMessage;
  try {
    res = await get(where.path);
  } catch (e) {
    // Some datastores list only the descriptor's extent (vcsim writes only `-flat.vmdk`).
    if (!(e instanceof VsphereError && e.code === 'NotFound') || !where.path.endsWith('.vmdk')) throw e;
    const flat = where.path.replace(/\.vmdk$/, '-flat.vmdk');
    const r = await get(flat);
    return { size: sizeOf(r), stream: r, file: `[${ds}] ${flat}` };
  }
  const size = sizeOf(res);
  if (size <= DESCRIPTOR_MAX) {
    // Small: a descriptor, or a tiny disk; read it and decide.
    const buf = await readSmall(res);
    const head = buf.toString('latin1');
    const extent = flatExtent(head);
    if (extent) {
      const r = await get(dir + extent);
      return { size: sizeOf(r), stream: r, file: `[${ds}] ${dir}${extent}` };
    }
    if (/^# Disk DescriptorFile/m.test(head)) throw new VsphereError('NotSupported', `${disk.file}: a descriptor with several or sparse extents`);
    return { size: buf.length, stream: Readable.from([buf]), file: disk.file };
  }
  return { size, stream: res, file: disk.file };
}
