/**
 * @vessel/tls: certificates are made once and kept, the serving certificate follows the
 * listen host under the same CA, a pin accepts only its own certificate, a migration leaf is
 * a non-CA server and client certificate its node's CA signed (KubeVirt's lifetimes), the
 * rotation decides right on a fake clock and a full rotation keeps every published bundle
 * verifying the leaf in use (openssl verify), bad certificates at start are made again, --listen parses, QEMU's DH
 * group is the standard one, and a QEMU credentials directory (x509 or PSK) has QEMU's file names,
 * that group, and modes 0700/0600.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import {
  checkPinned,
  ensureSelfSignedCert,
  ensureServingCerts,
  FFDHE2048_PEM,
  MigrationCa,
  migrationCertLifetimes,
  parseListen,
  rotationStep,
  writeQemuTlsDir,
  writeQemuTlsSet,
} from './index.ts';

describe('@vessel/tls', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vessel-tls-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** openssl's verdict on `leafPem` against `bundlePem` at `atMs` (its own clock otherwise). */
  const opensslVerify = async (bundlePem: string, leafPem: string, atMs: number) => {
    const d = await mkdtemp(join(dir, 'verify-'));
    await writeFile(join(d, 'bundle.pem'), bundlePem);
    await writeFile(join(d, 'leaf.pem'), leafPem);
    const r = spawnSync(
      'openssl',
      ['verify', '-attime', String(Math.floor(atMs / 1000)), '-purpose', 'sslserver', '-CAfile', join(d, 'bundle.pem'), join(d, 'leaf.pem')],
      {
        encoding: 'utf8',
      },
    );
    return r.status === 0 ? 'OK' : r.stderr.trim() || r.stdout.trim();
  };
  const certsIn = (bundle: string) => bundle.split('BEGIN CERTIFICATE').length - 1;

  test("the migration leaf is signed by the node's migration CA, names the node, is no CA, and is kept", async () => {
    const a = (await MigrationCa.open({ dir: join(dir, 'migration-ca'), nodeName: 'node-1' })).current();
    const b = (await MigrationCa.open({ dir: join(dir, 'migration-ca'), nodeName: 'node-1' })).current();
    assert.equal(b.certPem, a.certPem);
    const ca = new X509Certificate(a.caPem),
      leaf = new X509Certificate(a.certPem);
    assert.ok(ca.ca, 'the CA is a CA');
    assert.ok(!leaf.ca, 'QEMU refuses a CA certificate as server or client certificate');
    assert.ok(leaf.verify(ca.publicKey), 'signed by the CA');
    assert.equal(leaf.checkHost('node-1'), 'node-1');
    assert.deepEqual(leaf.keyUsage?.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    // KubeVirt's lifetimes by default: CA 7 days, leaf 24 h.
    const life = (c: X509Certificate) => (Date.parse(c.validTo) - Date.parse(c.validFrom)) / 3600_000;
    assert.equal(life(ca), 7 * 24);
    assert.equal(life(leaf), 24);
    const other = (await MigrationCa.open({ dir: join(dir, 'migration-ca-2'), nodeName: 'node-2' })).current();
    assert.ok(!new X509Certificate(other.certPem).verify(ca.publicKey), "another node's leaf is not this CA's");
  });

  test('the rotation decision: leaf at 80%, a new CA published an overlap before it signs, the old one dropped after its last leaf', () => {
    const life = migrationCertLifetimes({ caMs: 100_000, leafMs: 20_000, overlapMs: 5_000, checkMs: 60_000 });
    const ca = { notBefore: 0, notAfter: 100_000 };
    const leaf = { notBefore: 0, notAfter: 20_000, current: true };
    assert.deepEqual(rotationStep({}, 0, life), { step: 'fresh', at: 0 });
    assert.deepEqual(rotationStep({ ca, leaf }, 10_000, life), { at: 16_000 }, 'nothing due before 80% of the leaf');
    assert.equal(rotationStep({ ca, leaf }, 16_000, life).step, 'leaf');
    assert.equal(rotationStep({ ca, leaf: { ...leaf, current: false } }, 1000, life).step, 'leaf', 'a leaf of another CA or name');
    assert.equal(rotationStep({ ca }, 1000, life).step, 'leaf');
    // Expired or not yet valid (the clock went back): made again, never an error.
    assert.equal(rotationStep({ ca, leaf }, 100_000, life).step, 'fresh');
    assert.equal(rotationStep({ ca: { notBefore: 5000, notAfter: 105_000 }, leaf }, 1000, life).step, 'fresh');
    assert.equal(rotationStep({ ca, leaf: { notBefore: 5000, notAfter: 25_000, current: true } }, 1000, life).step, 'leaf');
    // The CA at 80%: a next CA, published first; the leaf stays with the old CA for the overlap.
    const leaf2 = { notBefore: 75_000, notAfter: 95_000, current: true };
    assert.equal(rotationStep({ ca, leaf: leaf2 }, 80_000, life).step, 'make-next');
    const next = { notBefore: 80_000, notAfter: 180_000 };
    assert.equal(rotationStep({ ca, leaf: leaf2, next }, 80_000, life).step, 'publish');
    assert.deepEqual(rotationStep({ ca, leaf: leaf2, next: { ...next, publishedAt: 81_000 } }, 82_000, life), { at: 86_000 });
    assert.equal(rotationStep({ ca, leaf: leaf2, next: { ...next, publishedAt: 81_000 } }, 86_000, life).step, 'switch');
    // A CA that expired while its successor was published: the successor at once.
    assert.equal(rotationStep({ ca, next: { ...next, publishedAt: 81_000 } }, 100_000, life).step, 'switch');
    // After the switch the old CA stays until its drop time.
    const after = { ca: next, leaf: { notBefore: 86_000, notAfter: 106_000, current: true }, old: { dropAfter: 95_000 } };
    assert.deepEqual(rotationStep(after, 90_000, life), { at: 95_000 });
    assert.equal(rotationStep(after, 95_000, life).step, 'drop-old');
    // A lifetime shortened by configuration: renewed at once.
    assert.equal(rotationStep({ ca: { notBefore: 0, notAfter: 10_000_000 }, leaf }, 1000, life).step, 'make-next');
    // Nothing due for long: looked at again after checkMs anyway.
    assert.deepEqual(
      rotationStep(
        { ca: { notBefore: 0, notAfter: 1e9 }, leaf: { notBefore: 0, notAfter: 1e8, current: true } },
        1000,
        migrationCertLifetimes({ caMs: 1e9, leafMs: 1e8, checkMs: 60_000 }),
      ),
      {
        at: 61_000,
      },
    );
    assert.throws(() => migrationCertLifetimes({ caMs: 10_000, overlapMs: 1_000 }), /overlap/);
    assert.throws(() => migrationCertLifetimes({ leafMs: -1 }), /positive/);
  });

  test('a full rotation with openssl on a fake clock: every published bundle verifies the leaf in use before and after each step', async () => {
    let now = Date.parse('2030-01-01T00:00:00Z');
    const published: string[] = [];
    const m = await MigrationCa.open({
      dir: join(dir, 'rotating'),
      nodeName: 'node-r',
      lifetimes: { caMs: 100_000, leafMs: 20_000, overlapMs: 5_000, checkMs: 60_000 },
      now: () => now,
      publish: async (b) => void published.push(b),
    });
    const t0 = now;
    const first = m.current();
    assert.equal(certsIn(first.caPem), 1);
    const leafOf = (c: { certPem: string }) => new X509Certificate(c.certPem);
    assert.equal(Date.parse(leafOf(first).validTo) - t0, 20_000, 'a leaf of 20 s, to the second');
    // The leaf at 80%: renewed, same CA.
    now = t0 + 16_000;
    await m.check();
    const second = m.current();
    assert.notEqual(second.certPem, first.certPem);
    assert.equal(second.caPem, first.caPem);
    assert.equal(await opensslVerify(first.caPem, second.certPem, now), 'OK');
    // The CA at 80%: a next CA beside it, published; the leaf still the old CA's.
    now = t0 + 80_000;
    await m.check();
    const during = m.current();
    assert.equal(certsIn(during.caPem), 2, 'old and new CA in the bundle');
    assert.equal(published.at(-1), during.caPem, 'the bundle with both is what the Node got');
    assert.equal(await opensslVerify(first.caPem, during.certPem, now), 'OK', 'a peer that read only the old bundle accepts the leaf in use');
    // Before the overlap ends nothing switches.
    now = t0 + 84_000;
    await m.check();
    assert.equal(m.current().certPem, during.certPem);
    // The overlap over: the leaf is the new CA's, which peers have had for 5 s.
    now = t0 + 85_500;
    await m.check();
    const switched = m.current();
    assert.notEqual(switched.certPem, during.certPem);
    assert.equal(await opensslVerify(during.caPem, switched.certPem, now), 'OK', 'the bundle published before the switch accepts the new leaf');
    assert.notEqual(await opensslVerify(first.caPem, switched.certPem, now), 'OK', 'the old CA alone does not');
    assert.equal(await opensslVerify(switched.caPem, during.certPem, now), 'OK', 'a leaf of the old CA still in a QEMU is accepted');
    assert.equal(certsIn(switched.caPem), 2);
    // The old CA leaves once its last leaf has expired: the one made at t0 + 80 s (the 16 s one
    // had expired), clamped to its CA's end, t0 + 100 s.
    assert.equal(Date.parse(leafOf(during).validTo), t0 + 100_000);
    now = t0 + 99_000;
    await m.check();
    assert.equal(certsIn(m.current().caPem), 2);
    now = t0 + 100_500;
    await m.check();
    const done = m.current();
    assert.equal(certsIn(done.caPem), 1, 'only the new CA');
    assert.equal(published.at(-1), done.caPem);
    assert.equal(await opensslVerify(done.caPem, done.certPem, now), 'OK');
    // Reopened (an agent restart): the same state, nothing made.
    const again = await MigrationCa.open({ dir: join(dir, 'rotating'), nodeName: 'node-r', lifetimes: m.lifetimes, now: () => now });
    assert.deepEqual(again.current(), done);
  });

  test('expired, not yet valid, or unreadable certificates found at start are made again, never an error', async () => {
    const life = { caMs: 60_000, leafMs: 20_000, overlapMs: 1_000 };
    const made = (at: number, name: string) => MigrationCa.open({ dir: join(dir, name), nodeName: 'node-e', lifetimes: life, now: () => at });
    for (const [name, at] of [
      ['expired', Date.now() - 3600_000],
      ['future', Date.now() + 3600_000],
    ] as const) {
      const old = (await made(at, name)).current();
      const m = await MigrationCa.open({ dir: join(dir, name), nodeName: 'node-e', lifetimes: life });
      const fresh = m.current();
      assert.notEqual(fresh.caPem, old.caPem, name);
      assert.equal(certsIn(fresh.caPem), 1, `${name}: the unusable CA is not kept`);
      assert.equal(await opensslVerify(fresh.caPem, fresh.certPem, Date.now()), 'OK', name);
    }
    const junk = join(dir, 'junk');
    await mkdir(junk);
    await writeFile(join(junk, 'ca.pem'), 'not a certificate');
    await writeFile(join(junk, 'node.pem'), 'nor this');
    await writeFile(join(junk, 'state.json'), '{');
    const m = await MigrationCa.open({ dir: junk, nodeName: 'node-e', lifetimes: life });
    assert.equal(await opensslVerify(m.current().caPem, m.current().certPem, Date.now()), 'OK');
  });

  test('stop() waits for a check under way: the directory can be removed once it resolves', async () => {
    let now = Date.parse('2030-01-01T00:00:00Z');
    let publishing: (() => void) | undefined;
    const m = await MigrationCa.open({
      dir: join(dir, 'stopping'),
      nodeName: 'node-s',
      lifetimes: { caMs: 100_000, leafMs: 20_000, overlapMs: 5_000, checkMs: 60_000 },
      now: () => now,
      // The check's first update of the Node held until released: the check is under way meanwhile.
      publish: () => (publishing ? Promise.resolve() : new Promise<void>((r) => (publishing = r))),
    });
    // Later: the bundle made at open is published (held), then the rotation's steps due by now are written.
    now += 80_000;
    const checked = m.check();
    while (!publishing) await new Promise((r) => setTimeout(r, 5));
    let stopped = false;
    const stopping = m.stop().then(() => (stopped = true));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(stopped, false, 'stop() waits for the check');
    publishing!();
    await Promise.all([checked, stopping]);
    await rm(join(dir, 'stopping'), { recursive: true });
  });

  test('a CA made before rotation (ca.crt and ca.key, 10 years) is kept in the bundle and rotated out', async () => {
    const legacy = join(dir, 'legacy');
    await mkdir(legacy);
    const r = spawnSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        join(legacy, 'ca.key'),
        '-out',
        join(legacy, 'ca.crt'),
        '-days',
        '3650',
        '-subj',
        '/CN=old',
      ],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 0, r.stderr);
    const oldCa = await readFile(join(legacy, 'ca.crt'), 'utf8');
    const m = await MigrationCa.open({ dir: legacy, nodeName: 'node-l', lifetimes: { overlapMs: 1_000 } });
    const c = m.current();
    assert.ok(c.caPem.startsWith(oldCa), 'the old CA first');
    assert.equal(certsIn(c.caPem), 2, 'and a next CA of 7 days beside it');
    assert.ok(new X509Certificate(c.certPem).verify(new X509Certificate(oldCa).publicKey), 'the leaf still the old CA’s until the next one is published');
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
  test('a set of QEMU credentials: one directory per content, written whole, older sets removed once unused', async () => {
    const parent = join(dir, 'sets');
    const leaf = { cert: 'CERT\n', key: 'KEY\n' };
    const a = { type: 'x509' as const, caCert: 'CA-A\n', server: leaf, client: leaf };
    // Writers racing with the same content agree on one complete directory and leave no temporary one.
    const [a1, a2] = await Promise.all([writeQemuTlsSet(parent, a), writeQemuTlsSet(parent, a)]);
    assert.equal(a1, a2);
    assert.equal(await readFile(join(a1, 'ca-cert.pem'), 'utf8'), 'CA-A\n');
    assert.deepEqual(await readdir(parent), [basename(a1)]);
    // A rotation: another directory; the old one stays while a QEMU may still be reading it.
    const b = await writeQemuTlsSet(parent, { ...a, caCert: 'CA-A\nCA-B\n' });
    assert.notEqual(b, a1);
    assert.equal(await readFile(join(a1, 'ca-cert.pem'), 'utf8'), 'CA-A\n');
    assert.equal((await stat(b)).mode & 0o777, 0o700);
    assert.equal((await stat(join(b, 'server-key.pem'))).mode & 0o777, 0o600);
    // Unused past the limit: removed by the next write; the set written stays.
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(await writeQemuTlsSet(parent, { ...a, caCert: 'CA-A\nCA-B\n' }, 10), b);
    assert.deepEqual(await readdir(parent), [basename(b)]);
  });
});
