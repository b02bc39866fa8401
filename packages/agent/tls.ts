/**
 * The agent's own TLS identity: a self-signed certificate made with openssl on first start.
 * The agent publishes its SHA-256 fingerprint on its Node, and the API server pins it when it
 * connects (uploads, later consoles), so no CA has to be shared with every host.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface AgentCert { certPem: string; keyPem: string; fingerprint256: string }

export async function ensureAgentCert(dir: string, nodeName: string): Promise<AgentCert> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const crt = join(dir, 'agent.crt'), key = join(dir, 'agent.key');
  if (!existsSync(crt) || !existsSync(key)) {
    try {
      await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
        '-keyout', key, '-out', crt, '-days', '3650', '-subj', `/CN=vessel-agent:${nodeName}`]);
    } catch (e) {
      const err = e as NodeJS.ErrnoException & { stderr?: string };
      throw new Error(err.code === 'ENOENT' ? 'openssl is not installed: run `apt-get install -y openssl`' : `openssl failed: ${err.stderr ?? err.message}`);
    }
  }
  const certPem = await readFile(crt, 'utf8');
  return { certPem, keyPem: await readFile(key, 'utf8'), fingerprint256: new X509Certificate(certPem).fingerprint256 };
}
