/**
 * A QEMU TLS credentials directory (the `dir` of a tls-creds-x509 or tls-creds-psk object, or of
 * qemu-nbd's `--object`): the credential files QEMU expects by name, plus `dh-params.pem`, so
 * every QEMU TLS server endpoint gets RFC 7919's group (./dh.ts says why) without its caller
 * knowing. The directory is 0700 and every file 0600, also when they existed before.
 */
import { chmod, mkdir, writeFile } from 'node:fs/promises';
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
