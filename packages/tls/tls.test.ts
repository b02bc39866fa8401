/**
 * @vessel/tls: certificates are made once and kept, the serving certificate follows the
 * listen host under the same CA, a pin accepts only its own certificate, a migration leaf is
 * a non-CA server and client certificate its node's CA signed, --listen parses, QEMU's DH
 * group is the standard one, and a QEMU credentials directory (x509 or PSK) has QEMU's file names,
 * that group, and modes 0700/0600.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { checkPinned, ensureMigrationCerts, ensureSelfSignedCert, ensureServingCerts, FFDHE2048_PEM, parseListen, writeQemuTlsDir } from './index.ts';

describe('@vessel/tls', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vessel-tls-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("the migration leaf is signed by the node's migration CA, names the node, is no CA, and is kept", async () => {
    const a = await ensureMigrationCerts(join(dir, 'migration-ca'), 'node-1');
    const b = await ensureMigrationCerts(join(dir, 'migration-ca'), 'node-1');
    assert.equal(b.certPem, a.certPem);
    const ca = new X509Certificate(a.caPem),
      leaf = new X509Certificate(a.certPem);
    assert.ok(ca.ca, 'the CA is a CA');
    assert.ok(!leaf.ca, 'QEMU refuses a CA certificate as server or client certificate');
    assert.ok(leaf.verify(ca.publicKey), 'signed by the CA');
    assert.equal(leaf.checkHost('node-1'), 'node-1');
    assert.deepEqual(leaf.keyUsage?.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    const other = await ensureMigrationCerts(join(dir, 'migration-ca-2'), 'node-2');
    assert.ok(!new X509Certificate(other.certPem).verify(ca.publicKey), "another node's leaf is not this CA's");
  });

  test('a self-signed certificate is made once and kept; its fingerprint is what a pin accepts', async () => {
    const a = await ensureSelfSignedCert(join(dir, 'agent'), 'agent', 'vessel-agent:n1');
    const b = await ensureSelfSignedCert(join(dir, 'agent'), 'agent', 'vessel-agent:n1');
    assert.equal(b.fingerprint256, a.fingerprint256);
    assert.equal(new X509Certificate(a.certPem).subject, 'CN=vessel-agent:n1');
    const check = checkPinned(a.fingerprint256, () => new Error('not the pinned certificate'));
    assert.equal(check('10.0.0.1', { fingerprint256: a.fingerprint256 } as PeerCertificate), undefined);
    assert.match(String(check('10.0.0.1', { fingerprint256: 'AA:BB' } as PeerCertificate)), /not the pinned certificate/);
  });

  test('the serving certificate covers the listen host, and is made again (same CA) for a new one', async () => {
    const pki = join(dir, 'pki');
    const first = await ensureServingCerts(pki, ['127.0.0.1']);
    const cert = new X509Certificate(first.certPem);
    assert.ok(cert.verify(new X509Certificate(first.caPem).publicKey));
    assert.equal(cert.checkIP('127.0.0.1'), '127.0.0.1');
    assert.equal((await ensureServingCerts(pki, ['127.0.0.1'])).certPem, first.certPem, 'kept while it covers the host');
    const moved = await ensureServingCerts(pki, ['10.11.12.13']);
    assert.equal(moved.caPem, first.caPem);
    assert.notEqual(moved.certPem, first.certPem);
    assert.equal(new X509Certificate(moved.certPem).checkIP('10.11.12.13'), '10.11.12.13');
  });

  test('--listen is HOST:PORT, [IPv6]:PORT, or :PORT for 127.0.0.1', () => {
    assert.deepEqual(parseListen('0.0.0.0:6443'), { host: '0.0.0.0', port: 6443 });
    assert.deepEqual(parseListen('[::1]:10250'), { host: '::1', port: 10250 });
    assert.deepEqual(parseListen(':0'), { host: '127.0.0.1', port: 0 });
    assert.throws(() => parseListen('6443', '127.0.0.1:6443'), /--listen must be HOST:PORT \(for example 127\.0\.0\.1:6443\), not "6443"/);
    assert.throws(() => parseListen('host:port'), /--listen must be HOST:PORT, not "host:port"/);
  });

  test("QEMU's DH group is RFC 7919's ffdhe2048, as openssl reads it", () => {
    const r = spawnSync('openssl', ['pkeyparam', '-text', '-noout'], { input: FFDHE2048_PEM, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /DH Parameters: \(2048 bit\)/);
    assert.match(r.stdout, /GROUP: ffdhe2048/);
  });
  test("a QEMU credentials directory: x509 or PSK files by QEMU's names, the DH group openssl reads, 0700 and 0600 even over older files", async () => {
    const mode = async (p: string) => (await stat(p)).mode & 0o777;
    const x = join(dir, 'qemu-x509');
    // Left by an earlier run with loose modes: they are tightened.
    await mkdir(x, { mode: 0o755 });
    await writeFile(join(x, 'server-key.pem'), 'old', { mode: 0o644 });
    const leaf = { cert: 'CERT\n', key: 'KEY\n' };
    assert.equal(await writeQemuTlsDir(x, { type: 'x509', caCert: 'CA\n', server: leaf, client: leaf }), x);
    assert.deepEqual((await readdir(x)).sort(), ['ca-cert.pem', 'client-cert.pem', 'client-key.pem', 'dh-params.pem', 'server-cert.pem', 'server-key.pem']);
    assert.equal(await readFile(join(x, 'server-key.pem'), 'utf8'), 'KEY\n');
    assert.equal(await mode(x), 0o700);
    for (const f of await readdir(x)) assert.equal(await mode(join(x, f)), 0o600, f);

    const p = join(dir, 'qemu-psk');
    await writeQemuTlsDir(p, { type: 'psk', keys: [{ identity: 'vslwarm-1', key: 'ab'.repeat(32) }] });
    assert.deepEqual((await readdir(p)).sort(), ['dh-params.pem', 'keys.psk']);
    assert.equal(await readFile(join(p, 'keys.psk'), 'utf8'), `vslwarm-1:${'ab'.repeat(32)}\n`);
    assert.equal(await mode(p), 0o700);
    assert.equal(await mode(join(p, 'keys.psk')), 0o600);
    const r = spawnSync('openssl', ['pkeyparam', '-text', '-noout', '-in', join(p, 'dh-params.pem')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /GROUP: ffdhe2048/);
    // A key or identity that would add a line to keys.psk is refused, nothing written.
    await assert.rejects(writeQemuTlsDir(join(dir, 'qemu-bad'), { type: 'psk', keys: [{ identity: 'a\nb', key: 'ab' }] }), /PSK/);
    await assert.rejects(writeQemuTlsDir(join(dir, 'qemu-bad'), { type: 'psk', keys: [{ identity: 'a', key: 'zz\nevil:00' }] }), /PSK/);
    await assert.rejects(stat(join(dir, 'qemu-bad')), /ENOENT/);
  });
});
