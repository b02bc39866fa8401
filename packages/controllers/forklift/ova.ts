/**
 * The `ova` provider's reader: the inventory of a directory of `.ova` files (tar archives) and
 * unpacked `.ovf` descriptors with their disks, read in place. Nothing is extracted or written:
 * a tar's entries are located by offset, and whatever is doubtful is refused with a stable code
 * (path traversal, links and devices, duplicate or oversize entries, an OVF naming a file outside
 * its package, a manifest checksum that does not match, a disk larger than its declared capacity).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, open, readdir, realpath, stat } from 'node:fs/promises';
import { ova } from '@vessel/api';
import { basename, dirname, isAbsolute, join, relative, sep } from 'node:path';
import { descendants, kid, kids, parseXml, XmlError, type XmlElement } from './xml.ts';

export const { OvaError, safeMemberName, readTar, parseManifest } = ova;
export type OvaError = ova.OvaError;
export type TarEntry = ova.TarEntry;
export type OvaLimits = ova.OvaLimits;
export type Digest = ova.Digest;
const { limitsOf } = ova;
const MiB = 1024 * 1024;

export interface OvfDisk {
  /** The OVF's diskId. */
  id: string;
  /** The file (href) holding it, relative to the package. */
  file: string;
  /** Declared capacity in bytes. */
  capacity: number;
  /** The OVF's format URI (VMDK streamOptimized, ...). */
  format: string;
  /** vsphere provider: the datastore id holding the disk (an OVA's disks are in its package, `source`). */
  datastore?: string;
  /** vsphere provider: a raw device mapping (not copied). */
  rdm?: boolean;
}
export interface OvfNic {
  name: string;
  network: string;
  mac?: string;
  model?: string;
}
export interface OvfVm {
  /** The VirtualSystem's ovf:id. */
  ovfId: string;
  name: string;
  osType: string;
  cpus: number;
  coresPerSocket?: number;
  memoryMB: number;
  /** `bios`, `efi`, or what the OVF says when it is neither. */
  firmware: string;
  disks: OvfDisk[];
  nics: OvfNic[];
}

/** "byte * 2^20", "byte*1024", "MegaBytes", "GigaBytes": the multiplier in bytes. */
export function allocationUnits(u: string | undefined, fallback: number): number {
  if (!u) return fallback;
  const s = u.replace(/\s+/g, '').toLowerCase();
  const pow = /^byte\*(\d+)\^(\d+)$/.exec(s);
  if (pow) return Number(pow[1]) ** Number(pow[2]);
  const mul = /^byte\*(\d+)$/.exec(s);
  if (mul) return Number(mul[1]);
  const named: Record<string, number> = { byte: 1, bytes: 1, kilobytes: 1024, megabytes: MiB, gigabytes: 1024 ** 3, terabytes: 1024 ** 4 };
  if (s in named) return named[s];
  throw new OvaError('OvfInvalid', `unknown allocation units "${u}"`);
}

const num = (v: string | undefined): number => {
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
};
const itemText = (item: XmlElement, name: string): string | undefined => kid(item, name)?.text.trim();

/** The virtual machines an OVF descriptor declares (one per VirtualSystem). OvaError OvfInvalid or OvfMalformed. */
export function parseOvf(text: string): OvfVm[] {
  let root: XmlElement;
  try {
    root = parseXml(text);
  } catch (e) {
    if (e instanceof XmlError) throw new OvaError('OvfMalformed', `OVF: ${e.message}`);
    throw e;
  }
  if (root.name !== 'Envelope') throw new OvaError('OvfInvalid', 'the OVF root element is not an Envelope');
  const files = new Map<string, string>();
  for (const f of kids(kid(root, 'References'), 'File')) {
    if (!f.attrs.id || !f.attrs.href) throw new OvaError('OvfInvalid', 'a References/File lacks its id or href');
    files.set(f.attrs.id, safeMemberName(f.attrs.href));
  }
  const disks = new Map<string, OvfDisk>();
  for (const d of kids(kid(root, 'DiskSection'), 'Disk')) {
    const file = files.get(d.attrs.fileRef ?? '');
    if (!d.attrs.diskId || !file) throw new OvaError('OvfInvalid', `disk "${d.attrs.diskId ?? ''}" names no file of References`);
    const capacity = num(d.attrs.capacity) * allocationUnits(d.attrs.capacityAllocationUnits, 1);
    disks.set(d.attrs.diskId, { id: d.attrs.diskId, file, capacity, format: d.attrs.format ?? '' });
  }
  const systems = descendants(root, 'VirtualSystem');
  if (!systems.length) throw new OvaError('OvfInvalid', 'the OVF declares no VirtualSystem');
  return systems.map((vs) => {
    const hw = kid(vs, 'VirtualHardwareSection');
    const os = kid(vs, 'OperatingSystemSection');
    const vm: OvfVm = {
      ovfId: vs.attrs.id ?? '',
      name: kid(vs, 'Name')?.text.trim() || vs.attrs.id || '',
      osType: os?.attrs.osType ?? kid(os, 'Description')?.text.trim() ?? os?.attrs.id ?? '',
      cpus: 0,
      memoryMB: 0,
      firmware: 'bios',
      disks: [],
      nics: [],
    };
    for (const c of kids(hw, 'Config')) if (c.attrs.key === 'firmware' && c.attrs.value) vm.firmware = c.attrs.value.toLowerCase();
    for (const item of [...kids(hw, 'Item'), ...kids(hw, 'EthernetPortItem'), ...kids(hw, 'StorageItem')]) {
      const type = itemText(item, 'ResourceType');
      if (type === '3') {
        vm.cpus = num(itemText(item, 'VirtualQuantity'));
        const cps = kids(item, 'CoresPerSocket')[0]?.text.trim();
        if (cps) vm.coresPerSocket = num(cps);
      } else if (type === '4') {
        vm.memoryMB = (num(itemText(item, 'VirtualQuantity')) * allocationUnits(itemText(item, 'AllocationUnits'), MiB)) / MiB;
      } else if (type === '10') {
        vm.nics.push({
          name: itemText(item, 'ElementName') ?? `nic${vm.nics.length}`,
          network: itemText(item, 'Connection') ?? '',
          ...(itemText(item, 'Address') ? { mac: itemText(item, 'Address')!.toLowerCase() } : {}),
          ...(itemText(item, 'ResourceSubType') ? { model: itemText(item, 'ResourceSubType') } : {}),
        });
      } else if (type === '17') {
        const ref = itemText(item, 'HostResource') ?? '';
        const id = ref.replace(/^ovf:\/(disk\/)?/, '').replace(/^\/disk\//, '');
        const disk = disks.get(id);
        if (!disk) throw new OvaError('OvfInvalid', `VM "${vm.name}": disk item names "${ref}", which DiskSection does not declare`);
        vm.disks.push(disk);
      }
    }
    return vm;
  });
}

/**
 * Digests already computed, by file identity: a migration's Initialize re-reads the package the
 * inventory scan checked moments before, and hashing a GiB-sized disk again cost seconds (issue 14
 * benchmark). The key holds device, inode, size, mtime and ctime: any write to the file changes
 * its ctime, which no user can set back, so a changed file is always hashed again.
 */
const digests = new Map<string, string>();
const MAX_DIGESTS = 1000;

async function digestOf(path: string, start: number, size: number, algorithm: string): Promise<string> {
  const h = createHash(algorithm);
  if (size === 0) return h.digest('hex');
  const st = await stat(path, { bigint: true });
  const key = [path, st.dev, st.ino, st.size, st.mtimeNs, st.ctimeNs, start, size, algorithm].join(':');
  const known = digests.get(key);
  if (known) return known;
  for await (const chunk of createReadStream(path, { start, end: start + size - 1, highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  const hex = h.digest('hex');
  // Checked again after the read: a file written meanwhile is hashed again next time.
  const after = await stat(path, { bigint: true });
  if (after.ctimeNs === st.ctimeNs && after.mtimeNs === st.mtimeNs && after.size === st.size) {
    if (digests.size >= MAX_DIGESTS) digests.delete(digests.keys().next().value!);
    digests.set(key, hex);
  }
  return hex;
}

/** A package's member: where its bytes are (the archive or a file beside the OVF). */
interface Member {
  path: string;
  offset: number;
  size: number;
}

async function readMember(m: Member, max: number, what: string): Promise<string> {
  if (m.size > max) throw new OvaError('OversizeEntry', `${what} is ${m.size} bytes, more than the ${max} allowed`);
  const fh = await open(m.path, 'r');
  try {
    const buf = Buffer.alloc(m.size);
    await fh.read(buf, 0, m.size, m.offset);
    return buf.toString('utf8');
  } finally {
    await fh.close();
  }
}

/** The virtual size a VMDK sparse (or streamOptimized) header declares, in bytes; undefined for other formats. */
async function vmdkCapacity(m: Member): Promise<number | undefined> {
  if (m.size < 512) return undefined;
  const fh = await open(m.path, 'r');
  try {
    const b = Buffer.alloc(512);
    await fh.read(b, 0, 512, m.offset);
    if (b.toString('latin1', 0, 4) !== 'KDMV') return undefined;
    return Number(b.readBigUInt64LE(12)) * 512;
  } finally {
    await fh.close();
  }
}

export interface PackageVm extends OvfVm {
  /** The package (`.ova` or `.ovf`) relative to the provider's directory. */
  source: string;
}

/** Members of an unpacked OVF: files beside it, resolved without leaving its directory. */
async function ovfMembers(ovfPath: string, names: string[]): Promise<Map<string, Member>> {
  const dir = await realpath(dirname(ovfPath));
  const out = new Map<string, Member>();
  for (const n of names) {
    const p = join(dir, n);
    let real: string;
    try {
      real = await realpath(p);
    } catch {
      throw new OvaError('FileNotFound', `"${n}" is missing beside the OVF`);
    }
    if (relative(dir, real).startsWith('..') || isAbsolute(relative(dir, real)))
      throw new OvaError('PathTraversal', `"${n}" resolves outside the OVF's directory`);
    const st = await lstat(p);
    if (!st.isFile()) throw new OvaError('LinkNotAllowed', `"${n}" is not a regular file`);
    out.set(n, { path: real, offset: 0, size: st.size });
  }
  return out;
}

/**
 * Reads one package, `.ova` or `.ovf`, at `path` (shown as `source`): its VMs, after the
 * manifest's digests are checked and every disk is found, within the limits and no larger than
 * declared. OvaError on anything refused.
 */
export async function readPackage(path: string, source: string, limits?: OvaLimits): Promise<PackageVm[]> {
  return (await openPackage(path, source, limits)).vms;
}

/** A package member's bytes: the file and the range holding them (a tar entry, or a whole file beside the OVF). */
export interface MemberRange {
  path: string;
  offset: number;
  size: number;
}

/** readPackage, with where each disk file's bytes are (checked as readPackage checks them). */
export async function openPackage(path: string, source: string, limits?: OvaLimits): Promise<{ vms: PackageVm[]; disks: Map<string, MemberRange> }> {
  const lim = limitsOf(limits);
  let members: Map<string, Member>;
  let ovfName: string;
  if (path.endsWith('.ova')) {
    const st = await stat(path);
    const fh = await open(path, 'r');
    let entries: TarEntry[];
    try {
      entries = await readTar(fh, st.size, lim);
    } finally {
      await fh.close();
    }
    members = new Map(entries.map((e) => [e.name, { path, offset: e.offset, size: e.size }]));
    const ovfs = entries.filter((e) => e.name.endsWith('.ovf'));
    if (ovfs.length !== 1) throw new OvaError('OvfInvalid', `the OVA holds ${ovfs.length} .ovf descriptors, not one`);
    ovfName = ovfs[0].name;
  } else {
    ovfName = basename(path);
    members = await ovfMembers(path, [ovfName]);
  }
  const vms = parseOvf(await readMember(members.get(ovfName)!, lim.maxDescriptorBytes, ovfName));
  const files = [...new Set(vms.flatMap((v) => v.disks.map((d) => d.file)))];
  const mfName = ovfName.replace(/\.ovf$/, '.mf');
  if (!path.endsWith('.ova')) {
    const wanted = [...files];
    try {
      await lstat(join(dirname(path), mfName));
      wanted.push(mfName);
    } catch {
      // no manifest: nothing to verify
    }
    for (const [k, v] of await ovfMembers(path, wanted)) members.set(k, v);
  }
  for (const f of files) {
    const m = members.get(f);
    if (!m) throw new OvaError('FileNotFound', `disk file "${f}" is not in the package`);
    if (m.size > lim.maxDiskBytes) throw new OvaError('OversizeEntry', `disk file "${f}" is ${m.size} bytes, more than the ${lim.maxDiskBytes} allowed`);
  }
  const mf = members.get(mfName);
  if (mf) {
    const manifest = parseManifest(await readMember(mf, lim.maxDescriptorBytes, mfName));
    for (const [name, want] of manifest) {
      const m = members.get(name);
      if (!m) throw new OvaError('ManifestMismatch', `the manifest names "${name}", which the package does not hold`);
      const got = await digestOf(m.path, m.offset, m.size, want.algorithm);
      if (got !== want.hex) throw new OvaError('ManifestMismatch', `${want.algorithm.toUpperCase()} of "${name}" is ${got}, the manifest says ${want.hex}`);
    }
  }
  for (const vm of vms)
    for (const d of vm.disks) {
      const virtual = await vmdkCapacity(members.get(d.file)!);
      if (virtual !== undefined && d.capacity > 0 && virtual > d.capacity)
        throw new OvaError('DiskLargerThanDeclared', `disk "${d.id}" (${d.file}) holds ${virtual} bytes, the OVF declares ${d.capacity}`);
      if (d.capacity <= 0 && virtual !== undefined) d.capacity = virtual;
    }
  return { vms: vms.map((v) => ({ ...v, source })), disks: new Map(files.map((f) => [f, members.get(f)!])) };
}

export interface InventoryVm extends PackageVm {
  /** Stable id: a digest of the package and the VirtualSystem id. */
  id: string;
}
export interface Inventory {
  vms: InventoryVm[];
  networks: { id: string; name: string }[];
  /** One per package: the "OVA storage" a StorageMap names. */
  datastores: { id: string; name: string }[];
  /** OVA has no hosts; kept for the shape shared with other providers. */
  hosts: { id: string; name: string }[];
  /** vsphere provider: the tree above the VMs. */
  datacenters?: { id: string; name: string; path: string }[];
  clusters?: { id: string; name: string }[];
  folders?: { id: string; name: string; parent: string }[];
  /** Packages refused, with why. */
  errors: { source: string; code: string; message: string }[];
}

/** Whether `dir` is one of `roots` or below one, after symlinks are resolved; OvaError PathNotAllowed otherwise. */
export async function allowedDir(dir: string, roots: readonly string[]): Promise<string> {
  if (!isAbsolute(dir)) throw new OvaError('PathNotAllowed', `"${dir}" is not an absolute path`);
  let real: string;
  try {
    real = await realpath(dir);
  } catch {
    throw new OvaError('ConnectionFailed', `"${dir}" cannot be read`);
  }
  for (const r of roots) {
    const root = await realpath(r).catch(() => undefined);
    if (root && (real === root || real.startsWith(root.endsWith(sep) ? root : root + sep))) return real;
  }
  throw new OvaError('PathNotAllowed', `"${dir}" is outside the directories the server may read (its OVA roots: ${roots.join(', ') || 'none'})`);
}

/** `ova:///path`, `file:///path` or `/path`: the local path the provider's URL names (NFS mounted by the administrator). */
export function ovaPath(url: string): string {
  const m = /^(?:ova|file):\/\/(\/.*)$/.exec(url);
  return m ? decodeURIComponent(m[1]) : url;
}

async function packagesUnder(dir: string, depth: number, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory() && depth > 0) out.push(...(await packagesUnder(dir, depth - 1, r)));
    else if (e.isFile() && (e.name.endsWith('.ova') || e.name.endsWith('.ovf'))) out.push(r);
  }
  return out.sort();
}

const shortId = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 16);

/** The inventory of the directory `dir` (checked against `roots`): every package in it and two levels below (symlinks not followed). */
export async function readInventory(dir: string, roots: readonly string[], limits?: OvaLimits): Promise<Inventory> {
  const real = await allowedDir(dir, roots);
  const inv: Inventory = { vms: [], networks: [], datastores: [], hosts: [], errors: [] };
  const networks = new Set<string>();
  for (const source of await packagesUnder(real, 2)) {
    try {
      const vms = await readPackage(join(real, source), source, limits);
      inv.datastores.push({ id: source, name: source });
      for (const vm of vms) {
        inv.vms.push({ ...vm, id: shortId(`${source}/${vm.ovfId}`) });
        for (const n of vm.nics) if (n.network) networks.add(n.network);
      }
    } catch (e) {
      if (!(e instanceof OvaError)) throw e;
      inv.errors.push({ source, code: e.code, message: e.message });
    }
  }
  inv.networks = [...networks].sort().map((n) => ({ id: n, name: n }));
  return inv;
}
