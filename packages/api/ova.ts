/**
 * OVA packages (Forklift's `ova` provider, docs/forklift.md): the tar walker and the manifest
 * parser, shared by the controllers (inventory) and the node agent (which reads a disk in place
 * inside the archive and so must find its member's offset and size itself, never trusting them
 * from an object). Pure: the archive is read through the caller's `read`.
 */

/** What readTar reads through: a node FileHandle fits. */
export interface TarSource {
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
}

export class OvaError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface TarEntry {
  name: string;
  /** Offset of the entry's data in the archive. */
  offset: number;
  size: number;
}

export interface OvaLimits {
  /** Largest OVF descriptor or manifest read into memory (default 4 MiB). */
  maxDescriptorBytes?: number;
  /** Largest disk file accepted (default 4 TiB). */
  maxDiskBytes?: number;
  /** Most entries in one archive (default 1000). */
  maxEntries?: number;
}

const MiB = 1024 * 1024;
export const limitsOf = (l: OvaLimits = {}): Required<OvaLimits> => ({
  maxDescriptorBytes: l.maxDescriptorBytes ?? 4 * MiB,
  maxDiskBytes: l.maxDiskBytes ?? 4 * 1024 ** 4,
  maxEntries: l.maxEntries ?? 1000,
});

/** A package member name made safe: relative, no `..`, no NUL; OvaError PathTraversal otherwise. */
export function safeMemberName(raw: string): string {
  const name = raw.replace(/^(\.\/)+/, '');
  if (!name || name.includes('\0') || /^([a-zA-Z]:)?[\\/]/.test(name) || name.split(/[/\\]/).some((s) => s === '..'))
    throw new OvaError('PathTraversal', `entry "${raw}" leaves the package`);
  return name;
}

function octal(b: Buffer, from: number, len: number): number {
  if (b[from] & 0x80) {
    // base-256 (GNU) for sizes of 8 GiB and more
    let n = b[from] & 0x7f;
    for (let i = from + 1; i < from + len; i++) n = n * 256 + b[i];
    return n;
  }
  const s = b
    .toString('latin1', from, from + len)
    .replace(/[\0 ]+$/g, '')
    .trim();
  if (!/^[0-7]*$/.test(s)) throw new OvaError('TarMalformed', `bad number field "${s}"`);
  return s ? parseInt(s, 8) : 0;
}

const cstr = (b: Buffer, from: number, len: number): string => {
  const end = b.indexOf(0, from);
  return b.toString('utf8', from, end >= 0 && end < from + len ? end : from + len);
};

function paxRecords(b: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < b.length) {
    const sp = b.indexOf(0x20, i);
    if (sp < 0) break;
    const len = parseInt(b.toString('latin1', i, sp), 10);
    if (!(len > 0) || i + len > b.length) throw new OvaError('TarMalformed', 'bad pax header');
    const rec = b.toString('utf8', sp + 1, i + len - 1);
    const eq = rec.indexOf('=');
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    i += len;
  }
  return out;
}

/**
 * The regular-file entries of the tar archive `fh` (of `fileSize` bytes), read from its headers
 * only. Refused (OvaError): links, devices and FIFOs (LinkNotAllowed), traversal (PathTraversal),
 * duplicates, entries past the end of the file, bad checksums (TarMalformed), too many entries.
 */
export async function readTar(fh: TarSource, fileSize: number, limits?: OvaLimits): Promise<TarEntry[]> {
  const lim = limitsOf(limits);
  const entries: TarEntry[] = [];
  const seen = new Set<string>();
  const header = Buffer.alloc(512);
  let pos = 0;
  let longName: string | undefined;
  let pax: Record<string, string> = {};
  while (pos + 512 <= fileSize) {
    const { bytesRead } = await fh.read(header, 0, 512, pos);
    if (bytesRead < 512) throw new OvaError('TarMalformed', 'truncated header');
    if (header.every((x) => x === 0)) break;
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i];
    if (sum !== octal(header, 148, 8)) throw new OvaError('TarMalformed', `bad header checksum at offset ${pos}`);
    const type = String.fromCharCode(header[156] || 0x30);
    let size = octal(header, 124, 12);
    if (pax.size !== undefined) size = Number(pax.size);
    const offset = pos + 512;
    if (!Number.isSafeInteger(size) || size < 0 || offset + size > fileSize)
      throw new OvaError('TarMalformed', `entry at offset ${pos} runs past the end of the archive`);
    pos = offset + Math.ceil(size / 512) * 512;
    if (type === 'x' || type === 'L') {
      if (size > 64 * 1024) throw new OvaError('OversizeEntry', 'extended header too large');
      const data = Buffer.alloc(size);
      await fh.read(data, 0, size, offset);
      if (type === 'x') pax = paxRecords(data);
      else longName = cstr(data, 0, size);
      continue;
    }
    if (type === 'g') continue;
    const prefix = header.toString('latin1', 257, 262) === 'ustar' ? cstr(header, 345, 155) : '';
    const raw = pax.path ?? longName ?? (prefix ? `${prefix}/${cstr(header, 0, 100)}` : cstr(header, 0, 100));
    pax = {};
    longName = undefined;
    if (type === '5') continue;
    if (type === '1' || type === '2') throw new OvaError('LinkNotAllowed', `entry "${raw}" is a link`);
    if (type !== '0' && type !== '7') throw new OvaError('LinkNotAllowed', `entry "${raw}" is not a regular file (type ${type})`);
    const name = safeMemberName(raw);
    if (seen.has(name)) throw new OvaError('TarMalformed', `entry "${name}" appears twice`);
    seen.add(name);
    entries.push({ name, offset, size });
    if (entries.length > lim.maxEntries) throw new OvaError('OversizeEntry', `more than ${lim.maxEntries} entries`);
  }
  return entries;
}

export type Digest = { algorithm: 'sha1' | 'sha256' | 'sha512'; hex: string };

/** `SHA256(file)= hex` lines of a manifest, by file name. */
export function parseManifest(text: string): Map<string, Digest> {
  const out = new Map<string, Digest>();
  for (const line of text.split(/\r?\n/)) {
    if (!line.trim()) continue;
    const m = /^(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$/.exec(line.trim());
    if (!m) throw new OvaError('ManifestInvalid', `manifest line "${line.slice(0, 80)}" is not ALGO(file)= digest`);
    out.set(safeMemberName(m[2]), { algorithm: m[1].toLowerCase() as Digest['algorithm'], hex: m[3].toLowerCase() });
  }
  return out;
}
