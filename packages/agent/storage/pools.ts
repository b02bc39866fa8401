/**
 * Storage pools: directories of qcow2 volumes. A volume's file is
 * `<pool>/<namespace>/<claim>-<uid>.qcow2` and never moves, because linked clones name it
 * as their backing file. Deleting a volume that linked clones still use leaves the file with
 * a `.deleted` tombstone beside it; `collect()` removes it once the last clone is gone.
 * Importers write `<volume>.tmp-*` / `.part-*` and publish by rename; uploads keep
 * `<volume>.upload` until the import from it succeeds, so a dropped upload can resume.
 */
import { lstatSync, realpathSync } from 'node:fs';
import { open, readdir, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { mkdir } from 'node:fs/promises';

export interface PoolConfig {
  name: string;
  dir: string;
  /** Seen by every node (NFS between real hosts): clones and volumes may be used anywhere. */
  shared: boolean;
}

const TEMP = /\.qcow2\.(tmp|part)-[0-9a-f]+$/;
const UID = /-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.qcow2/;
/** A copy a migration target kept after a post-copy that did not complete (block-migration.ts postcopyKeptPath). */
const POSTCOPY_KEPT = /^.+-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.qcow2\.postcopy-[A-Za-z0-9-]+$/;

/**
 * The kept post-copy copies among `files` (names in a namespace directory) whose claim is gone:
 * its uid is not one of `claimUids` (the claims that exist). A claim deleted and made again under
 * its name has a new uid, so the old claim's copies go too.
 */
export function orphanedPostcopyCopies(files: readonly string[], claimUids: ReadonlySet<string>): string[] {
  return files.filter((f) => {
    const uid = POSTCOPY_KEPT.exec(f)?.[1];
    return uid !== undefined && !claimUids.has(uid);
  });
}

export class Pool {
  readonly dir: string;
  constructor(
    readonly name: string,
    dir: string,
    readonly shared: boolean,
  ) {
    this.dir = resolve(dir);
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  volumePath(namespace: string, claim: string, uid: string): string {
    return join(this.dir, namespace, `${claim}-${uid}.qcow2`);
  }

  async ensureNamespaceDir(namespace: string): Promise<void> {
    await mkdir(join(this.dir, namespace), { recursive: true, mode: 0o700 });
  }

  /** Removes the namespace's directory when nothing is left in it (tombstoned volumes keep it). */
  async removeNamespaceDirIfEmpty(namespace: string): Promise<boolean> {
    return rmdir(join(this.dir, namespace)).then(
      () => true,
      () => false,
    );
  }

  /** The namespaces that have a directory in this pool. */
  async namespaceDirs(): Promise<string[]> {
    return (await readdir(this.dir, { withFileTypes: true }).catch(emptyIfMissing)).filter((d) => d.isDirectory()).map((d) => d.name);
  }

  /**
   * `path` (taken from an object: an annotation) as a path inside this pool's directory of
   * `namespace` (ANY_NAMESPACE: of any namespace), or a PathError. Checked lexically after
   * path.resolve and again with symlinks resolved (realpath of the file, or of its directory
   * when the file does not exist yet), before anything is opened: `<pool>/t1/../t2/f` or a
   * symlink in t1's directory to t2's file is refused. Returns the resolved path.
   */
  containedPath(namespace: string, path: string): string {
    if (typeof path !== 'string' || path === '' || path.includes('\0') || !isAbsolute(path)) {
      throw new PathError('PathNotInPool', `${JSON.stringify(String(path))} is not an absolute file path`);
    }
    const lexical = resolve(path);
    if (!lexical.startsWith(this.dir + sep)) throw new PathError('PathNotInPool', `the file is not in pool ${this.name}`);
    const root = namespace === ANY_NAMESPACE ? this.dir : join(this.dir, namespace);
    const refuse = () =>
      new PathError(
        'PathOutsideNamespace',
        namespace === ANY_NAMESPACE
          ? `the file is not in a namespace directory of pool ${this.name}`
          : `the file is not in namespace ${namespace}'s directory of pool ${this.name}: the agent only opens a namespace's own volumes`,
      );
    // Within a namespace's directory, never the pool's top level or the directory itself.
    if (!lexical.startsWith(root + sep) || (namespace === ANY_NAMESPACE && dirname(lexical) === this.dir)) throw refuse();
    const realRoot = realpathOr(root, () => join(realpathOr(this.dir), namespace === ANY_NAMESPACE ? '' : namespace));
    // A name that exists but does not resolve (a dangling symlink) could be created through: refused.
    const real = realpathOr(lexical, () => {
      if (lexists(lexical)) throw refuse();
      return join(realpathOr(dirname(lexical)), basename(lexical));
    });
    if (!real.startsWith(realRoot + sep) || (namespace === ANY_NAMESPACE && dirname(real) === realRoot)) throw refuse();
    return lexical;
  }

  /** Every qcow2 volume file in the pool (tombstoned ones included). */
  async volumes(): Promise<string[]> {
    const out: string[] = [];
    // Only a pool directory not made yet is empty: an unreadable one must not look like a pool
    // without volumes (callers decide from this which golden images are still in use).
    for (const ns of await readdir(this.dir, { withFileTypes: true }).catch(emptyIfMissing)) {
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
    for (const ns of await readdir(this.dir, { withFileTypes: true }).catch(emptyIfMissing)) {
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
   * Removes the copies migration targets kept after failed post-copies (orphanedPostcopyCopies)
   * whose claim no longer exists, in `namespaces` (all when undefined); returns their paths.
   */
  async removeOrphanedPostcopyCopies(claimUids: ReadonlySet<string>, namespaces?: readonly string[]): Promise<string[]> {
    const removed: string[] = [];
    for (const ns of namespaces ?? (await this.namespaceDirs())) {
      const dir = join(this.dir, ns);
      for (const f of orphanedPostcopyCopies(await readdir(dir).catch(emptyIfMissing), claimUids)) {
        await rm(join(dir, f), { force: true });
        removed.push(join(dir, f));
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
      for (const v of all) {
        const b = await backingFile(v);
        if (b) backing.add(resolve(b));
      }
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

/** For containedPath: a file in any namespace's directory (only for claims in the golden-images namespace). */
export const ANY_NAMESPACE = '*';

export type PathErrorCode = 'PathNotInPool' | 'PathOutsideNamespace';

/** A path from an object that the agent will not open. */
export class PathError extends Error {
  constructor(
    readonly code: PathErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'PathError';
  }
}

/**
 * The pool of `pools` whose directory of `namespace` holds `path`, with the resolved path (see
 * Pool.containedPath). Every path the agent takes from an object goes through here. `what`
 * names the path's source in the error (e.g. the annotation).
 */
export function containedPath(pools: Iterable<Pool>, namespace: string, path: string, what: string): { pool: Pool; path: string } {
  let outside: PathError | undefined;
  for (const pool of pools) {
    try {
      return { pool, path: pool.containedPath(namespace, path) };
    } catch (e) {
      if (!(e instanceof PathError)) throw e;
      if (e.code === 'PathOutsideNamespace') outside = e;
    }
  }
  if (outside) throw new PathError(outside.code, `${what}: ${outside.message}; refused`);
  throw new PathError('PathNotInPool', `${what}: the file is in none of this node's pools (another node's local pool, or not a volume at all)`);
}

function lexists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function realpathOr(path: string, fallback: () => string = () => path): string {
  try {
    return realpathSync.native(path);
  } catch {
    return fallback();
  }
}

/** The pool of `pools` a volume or snapshot file lives in. */
export function poolFor(pools: Iterable<Pool>, path: string): Pool | undefined {
  for (const p of pools) if (path.startsWith(p.dir + '/')) return p;
  return undefined;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/**
 * The backing file a qcow2 names in its header (offset 8: u64 offset, offset 16: u32 length),
 * read directly: cheaper than `qemu-img info` for every volume of a pool.
 */
export async function backingFile(path: string): Promise<string | undefined> {
  // Only a file removed meanwhile has no backing file: any other failure must not pass for
  // "backs nothing" (callers decide from this whether a golden image is still in use).
  const fh = await open(path, 'r').catch(undefinedIfMissing);
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

/** For `.catch` on a directory listing: a missing directory (ENOENT) is empty; any other failure is rethrown. */
export function emptyIfMissing(err: unknown): never[] {
  if ((err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return [];
  throw err;
}

/** For `.catch`: a missing file (ENOENT) becomes undefined; any other failure is rethrown. */
export function undefinedIfMissing(err: unknown): undefined {
  if ((err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return undefined;
  throw err;
}
