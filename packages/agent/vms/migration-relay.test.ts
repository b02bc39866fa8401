/** The migration relay over real sockets: TCP → unix and unix → TCP, half-close, clean-up. */
import assert from 'node:assert/strict';
import { randomBytes, createHash } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { formatHostPort, MigrationRelay, parseHostPort, RelayError } from './migration-relay.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'relay-test-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** An echo-like peer: answers with the md5 of everything it read once the client half-closed. */
function md5Server(): net.Server {
  return net.createServer({ allowHalfOpen: true }, (s) => {
    const h = createHash('md5');
    s.on('data', (d) => h.update(d));
    s.on('end', () => s.end(h.digest('hex')));
  });
}

async function exchange(connect: net.NetConnectOpts, payload: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ ...connect, allowHalfOpen: true });
    let out = '';
    s.on('data', (d) => (out += d.toString()));
    s.on('end', () => resolve(out));
    s.on('error', reject);
    s.end(payload);
  });
}

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

test('TCP → unix → (unix listener) and unix → TCP carry bytes both ways with half-close', async () => {
  const sock = join(dir, 'peer.sock');
  const peer = md5Server();
  await new Promise<void>((r) => peer.listen(sock, r));
  const tcpPeer = md5Server();
  await new Promise<void>((r) => tcpPeer.listen(0, '127.0.0.1', r));
  const out = join(dir, 'out.sock');
  await writeFile(out, 'stale'); // a file left by a killed relay does not block it
  const relay = await MigrationRelay.start([
    { listen: { host: '127.0.0.1', port: 0 }, connect: { path: sock } },
    { listen: { path: out }, connect: { host: '127.0.0.1', port: (tcpPeer.address() as net.AddressInfo).port } },
  ]);
  try {
    assert.ok(relay.port(0) > 0);
    assert.deepEqual(relay.listening[1], { path: out });
    assert.equal((await stat(out)).mode & 0o777, 0o600);
    const payload = randomBytes(8 << 20);
    const want = createHash('md5').update(payload).digest('hex');
    // Two connections at once through each route (the NBD server takes several).
    const got = await Promise.all([
      exchange({ host: '127.0.0.1', port: relay.port(0) }, payload),
      exchange({ host: '127.0.0.1', port: relay.port(0) }, payload.subarray(0, 1000)),
      exchange({ path: out }, payload),
    ]);
    assert.deepEqual(got, [want, createHash('md5').update(payload.subarray(0, 1000)).digest('hex'), want]);
  } finally {
    await relay.close();
    peer.close();
    tcpPeer.close();
  }
  assert.equal(await exists(out), false, 'its unix socket is removed');
  await relay.close(); // idempotent
});

test('a connection whose far side is missing is closed; close() ends open connections', async () => {
  const silent = net.createServer(() => undefined); // accepts, never answers
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  const relay = await MigrationRelay.start([
    { listen: { host: '127.0.0.1', port: 0 }, connect: { path: join(dir, 'nobody.sock') } },
    { listen: { host: '127.0.0.1', port: 0 }, connect: { host: '127.0.0.1', port: (silent.address() as net.AddressInfo).port } },
  ]);
  try {
    const got = await exchange({ host: '127.0.0.1', port: relay.port(0) }, Buffer.from('x')).catch((e: Error) => e.message);
    assert.match(got, /^$|ECONNRESET/);
    const open = net.connect({ host: '127.0.0.1', port: relay.port(1) });
    open.on('error', () => undefined);
    await new Promise((r) => open.once('connect', r));
    const closed = new Promise((r) => open.once('close', r));
    await relay.close(200); // the silent peer never ends it: cut after the grace
    await closed;
  } finally {
    await relay.close();
    silent.close();
  }
  await assert.rejects(exchange({ host: '127.0.0.1', port: relay.port(0) }, Buffer.from('x')), /ECONNREFUSED/);
});

test('close() stops listening but lets a stream in flight finish (nothing of its tail is dropped)', async () => {
  const sock = join(dir, 'slow.sock');
  const peer = md5Server();
  await new Promise<void>((r) => peer.listen(sock, r));
  const relay = await MigrationRelay.start([{ listen: { host: '127.0.0.1', port: 0 }, connect: { path: sock } }]);
  const payload = randomBytes(4 << 20);
  try {
    const answer = new Promise<string>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port: relay.port(0), allowHalfOpen: true });
      let out = '';
      s.on('data', (d) => (out += d.toString()));
      s.on('end', () => resolve(out));
      s.on('error', reject);
      s.write(payload.subarray(0, 1 << 20));
      // The rest is sent after close() was asked for.
      setTimeout(() => s.end(payload.subarray(1 << 20)), 300);
    });
    await new Promise((r) => setTimeout(r, 100));
    const closing = relay.close();
    assert.equal(await answer, createHash('md5').update(payload).digest('hex'));
    await closing;
  } finally {
    await relay.close();
    peer.close();
  }
});

test('a route that cannot listen fails the start with RelayError', async () => {
  await assert.rejects(
    MigrationRelay.start([{ listen: { host: '192.0.2.77', port: 0 }, connect: { path: join(dir, 'x.sock') } }]),
    (e: unknown) => e instanceof RelayError && /cannot listen/.test(e.message),
  );
  await assert.rejects(MigrationRelay.start([], {}), RelayError);
  await assert.rejects(MigrationRelay.start([{ listen: { path: join(dir, 'y') }, connect: { path: 'z' } }], { netns: '../x' }), RelayError);
});

test('the relay ends when its parent closes stdin (it never outlives the agent)', async () => {
  const relay = await MigrationRelay.start([{ listen: { path: join(dir, 'life.sock') }, connect: { host: '127.0.0.1', port: 9 } }]);
  const child = (relay as unknown as { child: import('node:child_process').ChildProcess }).child;
  child.stdin!.end();
  await new Promise((r) => child.once('exit', r));
  assert.equal(await exists(join(dir, 'life.sock')), false);
  await relay.close();
});

test('host:port parsing', () => {
  assert.deepEqual(parseHostPort('10.1.2.3:4444'), { host: '10.1.2.3', port: 4444 });
  assert.deepEqual(parseHostPort('[fd00::1]:80'), { host: 'fd00::1', port: 80 });
  assert.equal(formatHostPort({ host: 'fd00::1', port: 80 }), '[fd00::1]:80');
  assert.throws(() => parseHostPort('10.1.2.3'), RelayError);
  assert.throws(() => parseHostPort('a:0'), RelayError);
});
