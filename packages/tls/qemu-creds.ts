/**
 * A QEMU TLS credentials directory (the `dir` of a tls-creds-x509 or tls-creds-psk object, or of
 * qemu-nbd's `--object`): the credential files QEMU expects by name, plus `dh-params.pem`, so
 * every QEMU TLS server endpoint gets RFC 7919's group (./dh.ts says why) without its caller
 * knowing. The directory is 0700 and every file 0600, also when they existed before.
 * writeQemuTlsSet writes one whole set under a parent directory, for credentials that change while
 * QEMUs read them (a rotated certificate, a peer's new CA).
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FFDHE2048_PEM } from './dh.ts';

/** A certificate and its private key (PEM). */
export interface CertAndKey {
  cert: string;
  key: string;
}

export type QemuTlsCreds =
  /** tls-creds-x509: the CA bundle the peer is checked against, and this side's leaf (server and/or client). */
  | { type: 'x509'; caCert: string; server?: CertAndKey; client?: CertAndKey }
  /** tls-creds-psk: `identity:hexkey` lines (keys.psk); a client names its identity with `username`. */
  | { type: 'psk'; keys: { identity: string; key: string }[] };

/** The files QEMU reads in a credentials directory of `creds`, by name (dh-params.pem included). */
export function qemuTlsFiles(creds: QemuTlsCreds): [string, string][] {
  const files: [string, string][] = [];
  if (creds.type === 'psk') {
    for (const k of creds.keys)
      if (!/^[0-9a-f]+$/i.test(k.key) || /[:\n]/.test(k.identity)) throw new Error(`a PSK must be hex and its identity one line without ':'`);
    files.push(['keys.psk', creds.keys.map((k) => `${k.identity}:${k.key}\n`).join('')]);
  } else {
    files.push(['ca-cert.pem', creds.caCert]);
    if (creds.server) files.push(['server-cert.pem', creds.server.cert], ['server-key.pem', creds.server.key]);
    if (creds.client) files.push(['client-cert.pem', creds.client.cert], ['client-key.pem', creds.client.key]);
  }
  files.push(['dh-params.pem', FFDHE2048_PEM]);
  return files;
}

/** Writes `creds` into `dir` (made if missing; 0700, files 0600); returns `dir`. */
export async function writeQemuTlsDir(dir: string, creds: QemuTlsCreds): Promise<string> {
  const files = qemuTlsFiles(creds);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  for (const [name, text] of files) {
    const path = join(dir, name);
    await writeFile(path, text, { mode: 0o600 });
    // `mode` applies only to a new file: one left by an earlier run keeps its own.
    await chmod(path, 0o600);
  }
  return dir;
}

/** How long a set writeQemuTlsSet no longer returns is kept: a QEMU reads its files at object-add, right after the write. */
const OLD_SET_MS = 10 * 60_000;

/**
 * Writes `creds` as a set of its own under `parent`, in a directory named by the content's hash,
 * made under a temporary name and renamed into place whole; returns that directory. So a rotation,
 * or another writer with the same parent, never changes files a QEMU is about to read. The same
 * content gives the same directory (its time renewed); sets unused for 10 minutes are removed.
 */
export async function writeQemuTlsSet(parent: string, creds: QemuTlsCreds, oldSetMs = OLD_SET_MS): Promise<string> {
  const files = qemuTlsFiles(creds);
  const hash = createHash('sha256');
  for (const [name, text] of files) hash.update(name).update('\0').update(text).update('\0');
  const dir = join(parent, hash.digest('hex').slice(0, 16));
  await mkdir(parent, { recursive: true, mode: 0o700 });
  try {
    await stat(dir);
    // In use again: not one of the older sets removed below (by this call or another's).
    await utimes(dir, new Date(), new Date());
  } catch {
    const tmp = join(parent, `.new-${randomBytes(6).toString('hex')}`);
    await writeQemuTlsDir(tmp, creds);
    // Another writer made the same directory meanwhile: its files are the same.
    await rename(tmp, dir).catch(() => rm(tmp, { recursive: true, force: true }));
  }
  for (const e of await readdir(parent).catch(() => [] as string[])) {
    const p = join(parent, e);
    if (p !== dir && Date.now() - (await stat(p).catch(() => ({ mtimeMs: Date.now() }))).mtimeMs > oldSetMs) await rm(p, { recursive: true, force: true });
  }
  return dir;
}
