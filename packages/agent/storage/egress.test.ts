/**
 * The importer's egress policy against real HTTP servers: on loopback (refused unless the
 * administrator allows it), and in a network namespace the test makes, joined by a veth pair
 * (an address that is neither loopback nor this node's is allowed; redirects from it to
 * loopback, the metadata address or this node's own address are refused), and the same error
 * text whether the target is a closed port, a refused address, a name that does not resolve
 * or a host that does not answer. Traffic stays on loopback and the test's own link.
 */
import assert from 'node:assert/strict';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { agentEgressPolicy, refusalReason, unreachable, type EgressPolicy } from './egress.ts';
import { ImportError } from './errors.ts';
import { importDisk } from './import.ts';
import * as qemuImg from './qemu-img.ts';
import { openRegistryDisk } from './registry.ts';
import { MiB, makeRawDisk, sh } from './testing.ts';
import { makeNetns, probeInNetns, serveInNetns, type TestNetns } from './testing-egress.ts';

let work: string;
let raw: string;
let qcow2: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'vessel-egress-'));
  raw = join(work, 'disk.raw');
  qcow2 = join(work, 'disk.qcow2');
  await makeRawDisk(raw, 4 * MiB);
  sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
});

after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** A decoy "host-only service": counts the requests that reach it and answers with the test disk. */
async function decoy(host: string): Promise<{ url: string; port: number; hits: () => number; close(): Promise<void> }> {
  let hits = 0;
  const server = http.createServer((req, res) => {
    hits++;
    res.writeHead(200);
    createReadStream(qcow2).pipe(res);
  });
  await new Promise<void>((r) => server.listen(0, host, r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    hits: () => hits,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

async function importFrom(url: string, egress?: EgressPolicy, idleTimeoutMs?: number): Promise<{ error?: ImportError; dir: string }> {
  const dir = await mkdtemp(join(work, 'dest-'));
  try {
    await importDisk({ source: { kind: 'http', url }, dest: join(dir, 'disk.qcow2'), maxVirtualSize: 64 * MiB, egress, idleTimeoutMs });
    return { dir };
  } catch (e) {
    assert.ok(e instanceof ImportError, String(e));
    return { error: e, dir };
  }
}

/** The error text with the URL the user gave taken out: what is left must not depend on the target. */
function shape(message: string, url: string): string {
  const u = new URL(url);
  return message.split(`${u.protocol}//${u.host}${u.pathname}`).join('<URL>');
}

describe('egress policy: addresses', () => {
  test('loopback, link-local, unspecified, multicast and their IPv6 spellings are refused; loopback only is allowed by the override', () => {
    const refused = [
      '127.0.0.1',
      '127.8.9.10',
      '::1',
      '::ffff:127.0.0.1',
      '::ffff:7f00:1',
      '::127.0.0.1',
      '64:ff9b::7f00:1',
      '169.254.169.254',
      '::ffff:169.254.169.254',
      'fe80::1',
      'febf::1',
      '0.0.0.0',
      '0.1.2.3',
      '::',
      '224.0.0.1',
      '239.255.255.250',
      'ff02::1',
      '255.255.255.255',
    ];
    for (const a of refused) assert.ok(refusalReason(a, 80), `${a} must be refused`);
    const lab: EgressPolicy = { allowLoopback: true };
    for (const a of ['127.0.0.1', '::1', '::ffff:127.0.0.1', '127.1.1.1']) assert.equal(refusalReason(a, 80, lab), undefined, `${a} with the override`);
    for (const a of ['169.254.169.254', 'fe80::1', '0.0.0.0', '::', '224.0.0.1']) assert.ok(refusalReason(a, 80, lab), `${a} stays refused with the override`);
    // Ordinary addresses (only classified here, never contacted).
    for (const a of ['10.213.7.2', '192.0.2.77', '2001:db8::5', '172.16.0.1']) assert.equal(refusalReason(a, 80), undefined, a);
  });

  test("this node's own addresses are refused, and the API server's address and port", async () => {
    const own = Object.values(networkInterfaces())
      .flat()
      .filter((i) => i && !i.internal)
      .map((i) => i!.address.replace(/%.*$/, ''));
    assert.ok(own.length > 0, 'the host has a non-loopback address');
    for (const a of own) assert.ok(refusalReason(a, 80), a);
    for (const a of own.filter((x) => !x.startsWith('fe80:'))) assert.match(refusalReason(a, 80) ?? '', /own interfaces/, a);
    const p = await agentEgressPolicy({ allowLoopback: true, apiServerUrl: 'https://127.0.0.1:6443' });
    assert.match(refusalReason('127.0.0.1', 6443, p) ?? '', /denied/);
    assert.equal(refusalReason('127.0.0.1', 8080, p), undefined, 'other loopback ports stay allowed with the override');
    const q = await agentEgressPolicy({ allowLoopback: false, apiServerUrl: 'https://192.0.2.40:6443' });
    assert.match(refusalReason('192.0.2.40', 22, q) ?? '', /denied/, "every port of a remote API server's address");
    assert.match(refusalReason('::ffff:192.0.2.40', 6443, q) ?? '', /denied/, 'IPv4-mapped spelling');
  });
});

describe('egress policy: loopback sources', () => {
  let svc: Awaited<ReturnType<typeof decoy>>;
  before(async () => {
    svc = await decoy('127.0.0.1');
  });
  after(async () => {
    await svc?.close();
  });

  test('an http source on 127.0.0.1 (also as localhost and ::ffff:127.0.0.1) is refused without the override and never contacted', async () => {
    for (const url of [
      `${svc.url}/disk.qcow2`,
      `http://localhost:${svc.port}/disk.qcow2`,
      `http://[::ffff:127.0.0.1]:${svc.port}/disk.qcow2`,
      `http://2130706433:${svc.port}/disk.qcow2`,
      `http://0x7f.1:${svc.port}/disk.qcow2`,
    ]) {
      const r = await importFrom(url);
      assert.equal(r.error?.code, 'Unreachable', url);
      assert.deepEqual(await readdir(r.dir), [], 'nothing left behind');
    }
    assert.equal(svc.hits(), 0, 'the loopback service saw no request');
  });

  test('the same source imports with --allow-loopback-imports', async () => {
    const r = await importFrom(`${svc.url}/disk.qcow2`, { allowLoopback: true });
    assert.equal(r.error, undefined, r.error?.message);
    assert.ok((await qemuImg.compare(raw, join(r.dir, 'disk.qcow2'), { formatA: 'raw', formatB: 'qcow2' })).identical);
    assert.equal(svc.hits(), 1);
  });

  test("the override does not open the API server's port", async () => {
    const policy = await agentEgressPolicy({ allowLoopback: true, apiServerUrl: `https://127.0.0.1:${svc.port}` });
    const before = svc.hits();
    const r = await importFrom(`${svc.url}/disk.qcow2`, policy);
    assert.equal(r.error?.code, 'Unreachable');
    assert.equal(svc.hits(), before);
  });

  test('a registry source on loopback is refused without the override, before any request', async () => {
    await assert.rejects(
      openRegistryDisk({ url: `docker://127.0.0.1:${svc.port}/disks/x:v1`, insecure: true }),
      (e: unknown) => e instanceof ImportError && e.code === 'Unreachable',
    );
    assert.equal(svc.hits(), 1, 'no new request');
  });
});

describe('egress policy: https sources with a certConfigMap CA', () => {
  let server: https.Server;
  let caPem: string;
  let port = 0;
  let hits = 0;
  before(async () => {
    const at = (f: string) => join(work, f);
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    sh('openssl', ['req', '-x509', ...ec, '-keyout', at('ca.key'), '-out', at('ca.pem'), '-days', '2', '-subj', '/CN=vessel egress test CA']);
    sh('openssl', ['req', ...ec, '-keyout', at('tls.key'), '-out', at('tls.csr'), '-subj', '/CN=localhost']);
    await writeFile(at('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
    sh('openssl', [
      'x509',
      '-req',
      '-in',
      at('tls.csr'),
      '-CA',
      at('ca.pem'),
      '-CAkey',
      at('ca.key'),
      '-CAcreateserial',
      '-out',
      at('tls.pem'),
      '-days',
      '2',
      '-extfile',
      at('ext.cnf'),
    ]);
    caPem = await readFile(at('ca.pem'), 'utf8');
    server = https.createServer({ cert: await readFile(at('tls.pem')), key: await readFile(at('tls.key')) }, (_req, res) => {
      hits++;
      res.writeHead(200);
      createReadStream(qcow2).pipe(res);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  after(async () => {
    server?.closeAllConnections();
    await new Promise<void>((r) => server?.close(() => r()));
  });

  const run = async (url: string, egress: EgressPolicy | undefined, withCa = true) => {
    const dir = await mkdtemp(join(work, 'dest-'));
    return importDisk({
      source: { kind: 'http', url, caPem: withCa ? caPem : undefined },
      dest: join(dir, 'disk.qcow2'),
      maxVirtualSize: 64 * MiB,
      egress,
    }).then(
      () => undefined,
      (e: ImportError) => e,
    );
  };

  test('refused on loopback without the override; with it the CA is used, for an IP and for a name', async () => {
    assert.equal((await run(`https://127.0.0.1:${port}/disk`, undefined))?.code, 'Unreachable');
    assert.equal((await run(`https://localhost:${port}/disk`, undefined))?.code, 'Unreachable');
    assert.equal(hits, 0);
    assert.equal(await run(`https://127.0.0.1:${port}/disk`, { allowLoopback: true }), undefined);
    assert.equal(await run(`https://localhost:${port}/disk`, { allowLoopback: true }), undefined, 'the name is checked against the certificate (SNI)');
    const e = await run(`https://127.0.0.1:${port}/disk`, { allowLoopback: true }, false);
    assert.equal(e?.code, 'HttpError');
    assert.match(e?.message ?? '', /not trusted: add its CA with certConfigMap/);
  });
});

describe('egress policy: a network namespace joined by a veth pair', () => {
  let ns: TestNetns | string;
  let srv: Awaited<ReturnType<typeof serveInNetns>> | undefined;
  let hostLoop: Awaited<ReturnType<typeof decoy>> | undefined;
  let hostOwn: Awaited<ReturnType<typeof decoy>> | undefined;

  before(async () => {
    ns = await makeNetns();
    if (typeof ns === 'string') return;
    srv = await serveInNetns(ns, qcow2);
    hostLoop = await decoy('127.0.0.1');
    hostOwn = await decoy(ns.hostIp); // this node's own address on the test's link
  });
  after(async () => {
    await srv?.close();
    await hostLoop?.close();
    await hostOwn?.close();
    if (typeof ns === 'object') await ns.close();
  });

  test('a server that is neither loopback nor this node is allowed', async (t) => {
    if (typeof ns === 'string' || !srv) return t.skip(String(ns));
    const r = await importFrom(`http://${ns.nsIp}:${srv.port}/disk`);
    assert.equal(r.error, undefined, r.error?.message);
    assert.ok((await qemuImg.compare(raw, join(r.dir, 'disk.qcow2'), { formatA: 'raw', formatB: 'qcow2' })).identical);
  });

  test("redirects from it to loopback, 169.254.169.254 or this node's address are refused", async (t) => {
    if (typeof ns === 'string' || !srv || !hostLoop || !hostOwn) return t.skip(String(ns));
    const base = `http://${ns.nsIp}:${srv.port}/to?u=`;
    const targets = [
      `${hostLoop.url}/disk.qcow2`,
      'http://169.254.169.254/latest/meta-data/',
      `${hostOwn.url}/disk.qcow2`,
      `http://[::1]:${hostLoop.port}/disk.qcow2`,
    ];
    for (const to of targets) {
      const r = await importFrom(base + encodeURIComponent(to));
      assert.equal(r.error?.code, 'Unreachable', `redirect to ${to}: ${r.error?.message}`);
      assert.equal(shape(r.error.message, to), unreachable('<URL>').message, 'the one message, no detail beyond the URL');
      assert.deepEqual(await readdir(r.dir), []);
    }
    assert.equal(hostLoop.hits(), 0, 'the loopback service saw no request');
    assert.equal(hostOwn.hits(), 0, "the service on this node's address saw no request");
    assert.equal(srv.requests.filter((p) => p === '/to').length, targets.length, 'each redirect came from the allowed server');
  });

  test('a closed port, a refused address, an unresolvable name and a silent host give the same error', async (t) => {
    if (typeof ns === 'string' || !srv || !hostOwn) return t.skip(String(ns));
    // Run from inside the namespace (its resolver is its own address: lookups fail there).
    const closed = await decoy(ns.hostIp);
    const closedPort = closed.port;
    await closed.close();
    const targets = [
      { label: 'closed port', url: `http://${ns.hostIp}:${closedPort}/disk.qcow2` },
      { label: 'loopback (open port)', url: `http://127.0.0.1:${srv.port}/disk` },
      { label: 'own address (open port)', url: `http://${ns.nsIp}:${srv.port}/disk` },
      { label: 'metadata address', url: 'http://169.254.169.254/latest/meta-data/' },
      { label: 'unresolvable name', url: 'http://no-such-host.vessel-test.invalid/disk.qcow2' },
      { label: 'silent host (timeout)', url: `http://${ns.silentIp}:80/disk.qcow2` },
    ];
    const before = srv.requests.length;
    const results = await probeInNetns(ns, targets, 1500);
    for (const r of results) assert.equal(r.code, 'Unreachable', `${r.label}: ${r.code} ${r.message}`);
    console.log(`# from inside the namespace: ${results.map((r) => `${r.label} -> ${r.code}`).join('; ')}`);
    const shapes = new Set(results.map((r) => shape(r.message, r.url)));
    assert.deepEqual([...shapes], [unreachable('<URL>').message], 'one message for all');
    assert.equal(srv.requests.length, before, 'the refused open ports saw no request');
  });
});

describe('credentials and redirects', () => {
  test("the secretRef's Authorization goes to the URL's origin only, not to where it redirects", async () => {
    const seen: (string | undefined)[] = [];
    const target = http.createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(200);
      createReadStream(qcow2).pipe(res);
    });
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', r));
    const tport = (target.address() as AddressInfo).port;
    const first = http.createServer((req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(302, { location: `http://127.0.0.1:${tport}/disk` }).end();
    });
    await new Promise<void>((r) => first.listen(0, '127.0.0.1', r));
    try {
      const dir = await mkdtemp(join(work, 'dest-'));
      await importDisk({
        source: {
          kind: 'http',
          url: `http://127.0.0.1:${(first.address() as AddressInfo).port}/disk`,
          headers: { Authorization: 'Basic c2VjcmV0OnNlY3JldA==' },
        },
        dest: join(dir, 'disk.qcow2'),
        maxVirtualSize: 64 * MiB,
        egress: { allowLoopback: true },
      });
      assert.deepEqual(seen, ['Basic c2VjcmV0OnNlY3JldA==', undefined]);
    } finally {
      first.closeAllConnections();
      target.closeAllConnections();
      await new Promise<void>((r) => first.close(() => r()));
      await new Promise<void>((r) => target.close(() => r()));
    }
  });
});

test("an allowed pair (vessel up's local registry) opens one loopback port, not loopback at large, and never anything but loopback", async () => {
  const policy = await agentEgressPolicy({ allowLoopback: false, apiServerUrl: 'https://127.0.0.1:6443', allowed: [{ address: '127.0.0.1', port: 5000 }] });
  assert.equal(refusalReason('127.0.0.1', 5000, policy), undefined);
  assert.equal(refusalReason('::ffff:127.0.0.1', 5000, policy), undefined);
  assert.notEqual(refusalReason('127.0.0.1', 5001, policy), undefined);
  assert.notEqual(refusalReason('127.0.0.1', 6443, policy), undefined);
  assert.equal(refusalReason('169.254.169.254', 80, { allowed: [{ address: '169.254.169.254', port: 80 }] }), 'a link-local address');
});
