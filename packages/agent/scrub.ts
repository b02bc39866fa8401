/**
 * Host paths out of what tenants read. Errors from qemu-img, QEMU and the file system name
 * files in the pools and run directories, and a pool path names a namespace and a claim: shown
 * in a status condition or an Event, another tenant's (a clone source, a backing file) would
 * leak. Every message the agent writes to a condition or an Event goes through scrubPaths.
 */
import { realpathSync } from 'node:fs';
import { resolve } from 'node:path';

/** Directories whose paths never appear in a message: the pools and the agent's data directory. */
export interface ScrubRoots {
  /** Pool directories: a file there is described as its claim when it is the namespace's own volume. */
  pools: Iterable<string>;
  /** Other directories of the agent (its data directory: run directories, certificates). */
  other?: Iterable<string>;
}

const PATH_TAIL = '[^\\s\'"`,;:)\\]}>]*';
const VOLUME = /^\/([a-z0-9][a-z0-9-]*)\/([a-z0-9][a-z0-9.-]*?)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?:\.qcow2|@|$)/;

/**
 * `message` with every path under a root replaced by a neutral description: "volume <claim>"
 * for a volume (or snapshot file) of `namespace`'s own claim, else "the volume" for a pool file
 * and "a file of the node" for the rest. Other namespaces are never named.
 */
export function scrubPaths(message: string, roots: ScrubRoots, namespace?: string): string {
  const entries: { root: string; pool: boolean }[] = [];
  const add = (dir: string, pool: boolean) => {
    for (const d of new Set([resolve(dir), realOr(dir)])) if (d !== '/' && d.length > 1) entries.push({ root: d.replace(/\/+$/, ''), pool });
  };
  for (const d of roots.pools) add(d, true);
  for (const d of roots.other ?? []) add(d, false);
  // Longest first: a pool under the data directory is described as a pool file.
  entries.sort((a, b) => b.root.length - a.root.length);
  let out = message;
  for (const { root, pool } of entries) {
    const re = new RegExp(`${escape(root)}(?=/|$|[^A-Za-z0-9._-])(${PATH_TAIL})`, 'g');
    out = out.replace(re, (_m, tail: string) => {
      if (!pool) return 'a file of the node';
      const v = VOLUME.exec(tail);
      return v && namespace && v[1] === namespace ? `volume ${v[2]}` : 'the volume';
    });
  }
  return out;
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function realOr(dir: string): string {
  try {
    return realpathSync.native(dir);
  } catch {
    return resolve(dir);
  }
}
