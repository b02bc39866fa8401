/**
 * The server's CA and serving certificate, made with the openssl command on first start and
 * kept in the data directory. A serving certificate that does not cover the host the server
 * now listens on is made again (signed by the same CA, so kubeconfigs stay valid).
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface ServingCerts { caPem: string; certPem: string; keyPem: string }

async function openssl(args: string[]): Promise<void> {
  try {
    await run('openssl', args);
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new Error('openssl is not installed: run `apt-get install -y openssl`');
    throw new Error(`openssl ${args[0]} failed: ${err.stderr ?? err.message}`);
  }
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

export async function ensureServingCerts(dir: string, hosts: string[]): Promise<ServingCerts> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const ca = join(dir, 'ca.crt'), caKey = join(dir, 'ca.key');
  const crt = join(dir, 'server.crt'), key = join(dir, 'server.key');
  if (!existsSync(ca) || !existsSync(caKey)) {
    await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', caKey, '-out', ca, '-days', '3650', '-subj', '/CN=vessel-ca']);
  }
  if (!existsSync(crt) || !existsSync(key) || !covers(await readFile(crt, 'utf8'), hosts)) {
    const csr = join(dir, 'server.csr'), ext = join(dir, 'server.ext');
    await writeFile(ext, `subjectAltName=${sanFor(hosts)}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n`);
    await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', csr, '-subj', '/CN=vessel-apiserver']);
    await openssl(['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial',
      '-out', crt, '-days', '825', '-extfile', ext]);
  }
  return { caPem: await readFile(ca, 'utf8'), certPem: await readFile(crt, 'utf8'), keyPem: await readFile(key, 'utf8') };
}
