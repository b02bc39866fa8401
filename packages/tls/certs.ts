/**
 * Certificates made with the openssl command on first start and kept in a directory:
 * - the API server's CA and serving certificate; a serving certificate that does not cover
 *   the host the server now listens on is made again (signed by the same CA, so kubeconfigs
 *   stay valid);
 * - an agent's self-signed certificate: the agent publishes its SHA-256 fingerprint on its
 *   Node and the API server pins it when it connects, so no CA has to be shared with every host.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** P-256 keys: small and fast to make, and every TLS client Vessel meets accepts them. */
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

async function openssl(args: string[]): Promise<void> {
  try {
    await run('openssl', args);
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new Error('openssl is not installed: run `apt-get install -y openssl`');
    throw new Error(`openssl ${args[0]} failed: ${err.stderr ?? err.message}`);
  }
}

export interface SelfSignedCert {
  certPem: string;
  keyPem: string;
  fingerprint256: string;
}

/** `<dir>/<name>.crt` and `.key`, made once with subject CN=`cn` and kept. */
export async function ensureSelfSignedCert(dir: string, name: string, cn: string): Promise<SelfSignedCert> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const crt = join(dir, `${name}.crt`),
    key = join(dir, `${name}.key`);
  if (!existsSync(crt) || !existsSync(key)) {
    await openssl(['req', '-x509', ...EC_KEY, '-keyout', key, '-out', crt, '-days', '3650', '-subj', `/CN=${cn}`]);
  }
  const certPem = await readFile(crt, 'utf8');
  return { certPem, keyPem: await readFile(key, 'utf8'), fingerprint256: new X509Certificate(certPem).fingerprint256 };
}

/**
 * A `checkServerIdentity` that accepts only the certificate with this SHA-256 fingerprint
 * (as X509Certificate.fingerprint256 writes it); `mismatch` makes the error for any other.
 */
export function checkPinned(fingerprint256: string, mismatch: () => Error): (host: string, cert: PeerCertificate) => Error | undefined {
  return (_host, cert) => (cert.fingerprint256 === fingerprint256 ? undefined : mismatch());
}

export interface ServingCerts {
  caPem: string;
  certPem: string;
  keyPem: string;
}

function sanFor(hosts: string[]): string {
  const isIp = (h: string) => /^[0-9.]+$/.test(h) || h.includes(':');
  const all = [...new Set(['127.0.0.1', 'localhost', hostname(), ...hosts].filter((h) => h && h !== '0.0.0.0' && h !== '::'))];
  return all.map((h) => (isIp(h) ? `IP:${h}` : `DNS:${h}`)).join(',');
}

function covers(certPem: string, hosts: string[]): boolean {
  const cert = new X509Certificate(certPem);
  if (new Date(cert.validTo).getTime() < Date.now() + 24 * 3600 * 1000) return false;
  return hosts.every((h) => h === '0.0.0.0' || h === '::' || cert.checkHost(h) !== undefined || cert.checkIP(h) !== undefined);
}

/** `<dir>/ca.crt` and a `server.crt` it signed that covers `hosts` (and this host's names). */
export async function ensureServingCerts(dir: string, hosts: string[]): Promise<ServingCerts> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const ca = join(dir, 'ca.crt'),
    caKey = join(dir, 'ca.key');
  const crt = join(dir, 'server.crt'),
    key = join(dir, 'server.key');
  if (!existsSync(ca) || !existsSync(caKey)) {
    await openssl(['req', '-x509', ...EC_KEY, '-keyout', caKey, '-out', ca, '-days', '3650', '-subj', '/CN=vessel-ca']);
  }
  if (!existsSync(crt) || !existsSync(key) || !covers(await readFile(crt, 'utf8'), hosts)) {
    const csr = join(dir, 'server.csr'),
      ext = join(dir, 'server.ext');
    await writeFile(ext, `subjectAltName=${sanFor(hosts)}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n`);
    await openssl(['req', ...EC_KEY, '-keyout', key, '-out', csr, '-subj', '/CN=vessel-apiserver']);
    await openssl(['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-out', crt, '-days', '825', '-extfile', ext]);
  }
  return { caPem: await readFile(ca, 'utf8'), certPem: await readFile(crt, 'utf8'), keyPem: await readFile(key, 'utf8') };
}
