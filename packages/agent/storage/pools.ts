/**
 * Storage pools: directories of qcow2 volumes. A volume's file is
 * `<pool>/<namespace>/<claim>-<uid>.qcow2` and never moves, because linked clones name it
 * as their backing file. Deleting a volume that linked clones still use leaves the file with
 * a `.deleted` tombstone beside it; `collect()` removes it once the last clone is gone.
 * Importers write `<volume>.tmp-*` / `.part-*` and publish by rename; uploads keep
 * `<volume>.upload` until the import from it succeeds, so a dropped upload can resume.
 */
import { open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { mkdir } from 'node:fs/promises';

export interface PoolConfig {
  name: string;
  dir: string;
  /** Seen by every node (NFS between real hosts): clones and volumes may be used anywhere. */
  shared: boolean;
}

const TEMP = /\.qcow2\.(tmp|part)-[0-9a-f]+$/;
const UID = /-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.qcow2/;

export class Pool {
  readonly dir: string;
  constructor(readonly name: string, dir: string, readonly shared: boolean) { this.dir = resolve(dir); }

  async init(): Promise<void> { await mkdir(this.dir, { recursive: true, mode: 0o700 }); }

  volumePath(namespace: string, claim: string, uid: string): string {
    return join(this.dir, namespace, `${claim}-${uid}.qcow2`);
  }

  async ensureNamespaceDir(namespace: string): Promise<void> { await mkdir(join(this.dir, namespace), { recursive: true, mode: 0o700 }); }

  /** Every qcow2 volume file in the pool (tombstoned ones included). */
  async volumes(): Promise<string[]> {
    const out: string[] = [];
    for (const ns of await readdir(this.dir, { withFileTypes: true }).catch(() => [])) {
      if (!ns.isDirectory()) continue;
      for (const f of await readdir(join(this.dir, ns.name))) if (f.endsWith('.qcow2')) out.push(join(this.dir, ns.name, f));
    }
    return out;
  }

  /**
   * Removes importers' temporary files left by a process that died. `mine(uid)` says whether
   * the claim with that uid is this node's to clean (on a shared pool other nodes import too).
   */
  async removeStaleTemps(mine: (uid: string) => boolean): Promise<string[]> {
    const removed: string[] = [];
    for (const ns of await readdir(this.dir, { withFileTypes: true }).catch(() => [])) {
      if (!ns.isDirectory()) continue;
      for (const f of await readdir(join(this.dir, ns.name))) {
        const uid = UID.exec(f)?.[1];
        if (TEMP.test(f) && (!uid || mine(uid))) {
          await rm(join(this.dir, ns.name, f), { force: true });
          removed.push(f);
        }
      }
    }
    return removed;
  }

  /**
   * Deletes a volume, or tombstones it while linked clones in this pool still read it. Then
   * collects tombstoned files nothing reads any more (this one's backing file may be one).
   */
  async deleteVolume(path: string): Promise<'deleted' | 'kept-for-clones'> {
    await rm(`${path}.upload`, { force: true });
    const users = await this.cloneUsers(path);
    if (users.length > 0) {
      await writeFile(`${path}.deleted`, `kept while linked clones use it: ${users.map((u) => basename(u)).join(', ')}\n`);
      return 'kept-for-clones';
    }
    await rm(path, { force: true });
    await rm(`${path}.deleted`, { force: true });
    await this.collect();
    return 'deleted';
  }

  /** Removes tombstoned volumes no clone reads any more, repeatedly (chains unwind). */
  async collect(): Promise<string[]> {
    const removed: string[] = [];
    for (let again = true; again;) {
      again = false;
      const all = await this.volumes();
      const backing = new Set<string>();
      for (const v of all) { const b = await backingFile(v); if (b) backing.add(resolve(b)); }
      for (const v of all) {
        if (!backing.has(v) && (await exists(`${v}.deleted`))) {
          await rm(v, { force: true });
          await rm(`${v}.deleted`, { force: true });
          removed.push(v);
          again = true;
        }
      }
    }
    return removed;
  }

  /** Volumes in this pool whose backing file is `path`. */
  async cloneUsers(path: string): Promise<string[]> {
    const users: string[] = [];
    for (const v of await this.volumes()) if (v !== path && (await backingFile(v)) === path) users.push(v);
    return users;
  }
}

/** The pool of `pools` a volume or snapshot file lives in. */
export function poolFor(pools: Iterable<Pool>, path: string): Pool | undefined {
  for (const p of pools) if (path.startsWith(p.dir + '/')) return p;
  return undefined;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

/**
 * The backing file a qcow2 names in its header (offset 8: u64 offset, offset 16: u32 length),
 * read directly: cheaper than `qemu-img info` for every volume of a pool.
 */
export async function backingFile(path: string): Promise<string | undefined> {
  const fh = await open(path, 'r').catch(() => undefined);
  if (!fh) return undefined;
  try {
    const head = Buffer.alloc(20);
    const { bytesRead } = await fh.read(head, 0, 20, 0);
    if (bytesRead < 20 || head.readUInt32BE(0) !== 0x514649fb) return undefined; // "QFI\xfb"
    const offset = Number(head.readBigUInt64BE(8));
    const length = head.readUInt32BE(16);
    if (offset === 0 || length === 0 || length > 4096) return undefined;
    const name = Buffer.alloc(length);
    await fh.read(name, 0, length, offset);
    return name.toString('utf8');
  } finally {
    await fh.close();
  }
}
