/** Tests for choosing a kubeconfig file and resolving its context. */
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ClientError } from './errors.ts';
import { findKubeconfig, parseKubeconfig } from './kubeconfig.ts';

const CA_PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';

const kubeconfig = (opts: { namespace?: string; current?: string } = {}) => `
apiVersion: v1
kind: Config
clusters:
- name: vessel
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority-data: ${Buffer.from(CA_PEM).toString('base64')}
- name: other
  cluster:
    server: http://10.0.0.1:8080
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: vsl_secret
contexts:
- name: vessel
  context:
    cluster: vessel
    user: admin
${opts.namespace ? `    namespace: ${opts.namespace}\n` : ''}- name: other
  context:
    cluster: other
    user: nobody
current-context: ${opts.current ?? 'vessel'}
`;

const made: string[] = [];
after(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'vessel-kubeconfig-'));
  made.push(d);
  return d;
}

test('parseKubeconfig resolves the current context', () => {
  const cfg = parseKubeconfig(kubeconfig(), '/x/kubeconfig');
  assert.equal(cfg.context, 'vessel');
  assert.equal(cfg.server, 'https://127.0.0.1:6443');
  assert.equal(cfg.caPem, CA_PEM);
  assert.equal(cfg.token, 'vsl_secret');
  assert.equal(cfg.insecureSkipTlsVerify, false);
  assert.equal(cfg.namespace, 'default');
});

test('parseKubeconfig uses the context namespace and an explicit context', () => {
  assert.equal(parseKubeconfig(kubeconfig({ namespace: 'team-a' }), '/x').namespace, 'team-a');
  const other = parseKubeconfig(kubeconfig(), '/x', 'other');
  assert.equal(other.server, 'http://10.0.0.1:8080');
  assert.equal(other.insecureSkipTlsVerify, true);
  assert.equal(other.token, undefined);
});

test('parseKubeconfig reads certificate-authority files relative to the kubeconfig', () => {
  const dir = tempDir();
  writeFileSync(join(dir, 'ca.crt'), CA_PEM);
  const text = kubeconfig().replace(/certificate-authority-data: .*/, 'certificate-authority: ca.crt');
  assert.equal(parseKubeconfig(text, join(dir, 'kubeconfig')).caPem, CA_PEM);
});

test('parseKubeconfig explains what is wrong', () => {
  assert.throws(
    () => parseKubeconfig(kubeconfig({ current: 'nope' }), '/x'),
    (e: unknown) => e instanceof ClientError && e.code === 'BadKubeconfig' && /context "nope" is not defined/.test(e.message),
  );
  assert.throws(
    () => parseKubeconfig('clusters: [', '/x'),
    (e: unknown) => e instanceof ClientError && /not valid YAML/.test(e.message),
  );
  assert.throws(() => parseKubeconfig('kind: Config\n', '/x'), /no current-context/);
});

test('findKubeconfig: flag, then $KUBECONFIG, then data dirs, then ~/.kube/config', () => {
  const dir = tempDir();
  const home = join(dir, 'home');
  const dataDir = join(dir, 'data');
  mkdirSync(join(home, '.kube'), { recursive: true });
  mkdirSync(dataDir);
  const explicit = join(dir, 'explicit');
  const fromEnv = join(dir, 'env');
  for (const f of [explicit, fromEnv, join(dataDir, 'kubeconfig'), join(home, '.kube', 'config')]) writeFileSync(f, kubeconfig());

  const env = { KUBECONFIG: `${join(dir, 'missing')}:${fromEnv}`, VESSEL_DATA_DIR: dataDir };
  assert.equal(findKubeconfig({ explicit, env, home }), explicit);
  assert.equal(findKubeconfig({ env, home }), fromEnv);
  assert.equal(findKubeconfig({ env: { VESSEL_DATA_DIR: dataDir }, home }), join(dataDir, 'kubeconfig'));
  // /var/lib/vessel/kubeconfig may exist on this machine; only assert the fallback when it does not.
  const fallback = findKubeconfig({ env: {}, home });
  assert.ok(fallback === join(home, '.kube', 'config') || fallback === '/var/lib/vessel/kubeconfig');
});

test('findKubeconfig says what to do when nothing is found', () => {
  const dir = tempDir();
  assert.throws(
    () => findKubeconfig({ explicit: join(dir, 'nope'), env: {}, home: dir }),
    (e: unknown) => e instanceof ClientError && e.code === 'NoKubeconfig' && /--kubeconfig/.test(e.message),
  );
  assert.throws(() => findKubeconfig({ env: { KUBECONFIG: join(dir, 'nope') }, home: dir }), /KUBECONFIG/);
});
