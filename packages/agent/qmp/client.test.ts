/**
 * The QMP client against a fake QMP server on a unix socket: greeting and capabilities,
 * framing (several messages per chunk, messages split anywhere), id matching, errors,
 * timeouts, events and what a closed connection does to pending commands.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import { QMP_DEFAULT_TIMEOUT_MS, QmpClient, defaultTimeoutFor, type QmpEvent } from './client.ts';
import { QmpClientError, QmpClosedError, QmpConnectError, QmpError, QmpProtocolError, QmpTimeoutError } from './errors.ts';

type Msg = { execute: string; arguments?: Record<string, unknown>; id: number };

const GREETING = { QMP: { version: { qemu: { micro: 2, minor: 2, major: 7 }, package: 'Debian 1:7.2' }, capabilities: ['oob'] } };

/** A QMP server double: greets, answers qmp_capabilities, hands every other command to `onCommand`. */
class FakeQmp {
  readonly server: net.Server;
  readonly received: Msg[] = [];
  readonly conns: net.Socket[] = [];
  onCommand: (msg: Msg, conn: net.Socket) => void = (msg, conn) => send(conn, { return: {}, id: msg.id });
  greet: ((conn: net.Socket) => void) | undefined = (conn) => send(conn, GREETING);
  capabilities: (msg: Msg, conn: net.Socket) => void = (msg, conn) => send(conn, { return: {}, id: msg.id });

  constructor(readonly path: string) {
    this.server = net.createServer((conn) => {
      this.conns.push(conn);
      conn.on('error', () => undefined);
      this.greet?.(conn);
      let buf = '';
      conn.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const msg = JSON.parse(buf.slice(0, nl)) as Msg;
          buf = buf.slice(nl + 1);
          this.received.push(msg);
          if (msg.execute === 'qmp_capabilities') this.capabilities(msg, conn);
          else this.onCommand(msg, conn);
        }
      });
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, resolve));
  }

  close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

function send(conn: net.Socket, msg: unknown): void {
  conn.write(JSON.stringify(msg) + '\r\n');
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let dir: string;
let n = 0;
const fakes: FakeQmp[] = [];
const clients: QmpClient[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vessel-qmp-'));
});
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
  for (const f of fakes.splice(0)) await f.close();
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function fake(): Promise<FakeQmp> {
  const f = new FakeQmp(join(dir, `qmp-${n++}.sock`));
  await f.listen();
  fakes.push(f);
  return f;
}

async function connect(f: FakeQmp, opts: Parameters<typeof QmpClient.connect>[1] = {}): Promise<QmpClient> {
  const c = await QmpClient.connect(f.path, { timeoutMs: 2000, ...opts });
  clients.push(c);
  return c;
}

test('connect reads the greeting, negotiates capabilities, execute sends arguments and returns the reply', async () => {
  const f = await fake();
  f.onCommand = (msg, conn) => send(conn, { return: { status: 'running', running: true, echo: msg.arguments ?? null }, id: msg.id });
  const c = await connect(f);
  assert.deepEqual(c.greeting.version.qemu, { major: 7, minor: 2, micro: 2 });
  assert.deepEqual(c.greeting.capabilities, ['oob']);
  assert.equal(f.received[0].execute, 'qmp_capabilities');
  const st = await c.execute<{ status: string; running: boolean; echo: unknown }>('query-status');
  assert.deepEqual(st, { status: 'running', running: true, echo: null });
  const r = await c.execute<{ echo: unknown }>('device_del', { id: 'net1' });
  assert.deepEqual(r.echo, { id: 'net1' });
  assert.equal('arguments' in f.received[1], false, 'no arguments key when none are given');
  assert.notEqual(f.received[1].id, f.received[2].id);
});

test('replies are matched by id, not by arrival order', async () => {
  const f = await fake();
  const held: Msg[] = [];
  f.onCommand = (msg, conn) => {
    held.push(msg);
    if (held.length === 3) for (const m of held.reverse()) send(conn, { return: m.execute, id: m.id });
  };
  const c = await connect(f);
  const results = await Promise.all([c.execute('query-a'), c.execute('query-b'), c.execute('query-c')]);
  assert.deepEqual(results, ['query-a', 'query-b', 'query-c']);
});

test('framing: several messages in one chunk, a message split across chunks and inside a UTF-8 character, junk lines skipped', async () => {
  const f = await fake();
  let conn: net.Socket | undefined;
  const ids: number[] = [];
  f.onCommand = (msg, c) => {
    conn = c;
    ids.push(msg.id);
  };
  const c = await connect(f);
  const events: QmpEvent[] = [];
  c.on('event', (ev) => events.push(ev));
  const p1 = c.execute('query-one');
  const p2 = c.execute('query-two');
  while (ids.length < 2) await sleep(5);
  const ts = { seconds: 1700000000, microseconds: 5 };
  // Event, reply, junk, event in one write.
  conn!.write(
    JSON.stringify({ event: 'STOP', timestamp: ts }) +
      '\r\n' +
      JSON.stringify({ return: { a: 1 }, id: ids[0] }) +
      '\r\n' +
      'this is not json\r\n[1,2]\r\n\r\n' +
      JSON.stringify({ event: 'RESUME', data: { reason: 'x' }, timestamp: ts }) +
      '\n',
  );
  assert.deepEqual(await p1, { a: 1 });
  // One reply in three pieces; the second cut falls inside the 3-byte character '€'.
  const bytes = Buffer.from(JSON.stringify({ return: { name: 'disk-€-ü' }, id: ids[1] }) + '\r\n');
  const euro = bytes.indexOf(Buffer.from('€'));
  conn!.write(bytes.subarray(0, 5));
  await sleep(20);
  conn!.write(bytes.subarray(5, euro + 1));
  await sleep(20);
  conn!.write(bytes.subarray(euro + 1));
  assert.deepEqual(await p2, { name: 'disk-€-ü' });
  assert.deepEqual(events, [
    { event: 'STOP', data: {}, timestamp: ts },
    { event: 'RESUME', data: { reason: 'x' }, timestamp: ts },
  ]);
});

test('waitForEvent resolves with the first matching event and times out otherwise', async () => {
  const f = await fake();
  let conn: net.Socket | undefined;
  f.onCommand = (msg, c) => {
    conn = c;
    send(c, { return: {}, id: msg.id });
  };
  const c = await connect(f);
  await c.execute('query-x');
  const ts = { seconds: 1, microseconds: 2 };
  const job = c.waitForEvent('JOB_STATUS_CHANGE', { timeoutMs: 2000, match: (ev) => ev.data.id === 'j2' });
  send(conn!, { event: 'JOB_STATUS_CHANGE', data: { id: 'j1', status: 'running' }, timestamp: ts });
  send(conn!, { event: 'JOB_STATUS_CHANGE', data: { id: 'j2', status: 'concluded' }, timestamp: ts });
  assert.deepEqual((await job).data, { id: 'j2', status: 'concluded' });
  await assert.rejects(c.waitForEvent('SHUTDOWN', { timeoutMs: 50 }), (err: unknown) => {
    assert.ok(err instanceof QmpTimeoutError);
    assert.equal(err.code, 'Timeout');
    assert.match(err.message, /event SHUTDOWN did not arrive within 50 ms/);
    return true;
  });
});

test('a QMP error reply becomes QmpError with class and desc', async () => {
  const f = await fake();
  f.onCommand = (msg, conn) => send(conn, { error: { class: 'DeviceNotFound', desc: "Device 'nope' not found" }, id: msg.id });
  const c = await connect(f);
  await assert.rejects(c.execute('device_del', { id: 'nope' }), (err: unknown) => {
    assert.ok(err instanceof QmpError);
    assert.ok(err instanceof QmpClientError);
    assert.equal(err.code, 'CommandFailed');
    assert.equal(err.command, 'device_del');
    assert.equal(err.errorClass, 'DeviceNotFound');
    assert.equal(err.desc, "Device 'nope' not found");
    assert.equal(err.message, "QMP device_del failed: Device 'nope' not found (DeviceNotFound)");
    return true;
  });
  assert.equal(c.closed, false, 'an error reply does not end the session');
});

test('a command without an answer rejects with QmpTimeoutError; its late reply is dropped and later commands work', async () => {
  const f = await fake();
  const silent: Msg[] = [];
  f.onCommand = (msg, conn) => {
    if (msg.execute === 'query-slow') silent.push(msg);
    else send(conn, { return: msg.execute, id: msg.id });
  };
  const c = await connect(f);
  const t0 = Date.now();
  await assert.rejects(c.execute('query-slow', undefined, { timeoutMs: 80 }), (err: unknown) => {
    assert.ok(err instanceof QmpTimeoutError);
    assert.equal(err.code, 'Timeout');
    assert.equal(err.command, 'query-slow');
    assert.equal(err.timeoutMs, 80);
    assert.match(err.message, /query-slow got no answer within 80 ms/);
    return true;
  });
  assert.ok(Date.now() - t0 >= 75);
  send(f.conns[0], { return: 'late', id: silent[0].id });
  assert.equal(await c.execute('query-fast'), 'query-fast');
});

test('defaultTimeoutFor: table entries, prefixes, per-client overrides, a default', () => {
  assert.equal(defaultTimeoutFor('query-status'), 5000);
  assert.equal(defaultTimeoutFor('query-migrate'), 5000);
  assert.equal(defaultTimeoutFor('stop'), 5000);
  assert.equal(defaultTimeoutFor('cont'), 5000);
  assert.equal(defaultTimeoutFor('system_powerdown'), 5000);
  assert.equal(defaultTimeoutFor('blockdev-snapshot-sync'), 60_000);
  assert.equal(defaultTimeoutFor('blockdev-whatever-new'), 30_000);
  assert.equal(defaultTimeoutFor('migrate'), 30_000);
  assert.equal(defaultTimeoutFor('block-job-cancel'), 30_000);
  assert.equal(defaultTimeoutFor('x-unknown'), QMP_DEFAULT_TIMEOUT_MS);
  assert.equal(defaultTimeoutFor('query-status', { 'query-status': 100 }), 100);
});

test('per-client timeout overrides apply to execute', async () => {
  const f = await fake();
  f.onCommand = () => undefined;
  const c = await connect(f, { timeouts: { 'query-status': 60 } });
  await assert.rejects(c.execute('query-status'), (err: unknown) => err instanceof QmpTimeoutError && err.timeoutMs === 60);
});

test('when QEMU closes the socket every pending command and event wait rejects, close is emitted once', async () => {
  const f = await fake();
  let seen = 0;
  f.onCommand = () => {
    seen++;
  };
  const c = await connect(f);
  const closes: string[] = [];
  c.on('close', (reason) => closes.push(reason));
  const a = c.execute('query-a');
  const b = c.execute('stop');
  const ev = c.waitForEvent('STOP', { timeoutMs: 5000 });
  while (seen < 2) await sleep(5);
  f.conns[0].end();
  for (const p of [a, b, ev]) {
    await assert.rejects(p, (err: unknown) => {
      assert.ok(err instanceof QmpClosedError);
      assert.equal(err.code, 'Closed');
      assert.match(err.message, /QEMU closed the connection/);
      return true;
    });
  }
  assert.deepEqual(closes, ['QEMU closed the connection']);
  assert.equal(c.closed, true);
  await assert.rejects(c.execute('cont'), (err: unknown) => err instanceof QmpClosedError && err.command === 'cont');
  await c.close(); // idempotent
  assert.equal(closes.length, 1);
});

test('close() by the caller rejects pending commands and the server sees the end of the connection', async () => {
  const f = await fake();
  f.onCommand = () => undefined;
  const c = await connect(f);
  const ended = new Promise<void>((resolve) => f.conns[0].on('close', () => resolve()));
  const p = c.execute('query-status');
  await c.close();
  await assert.rejects(p, (err: unknown) => err instanceof QmpClosedError && /closed by the client/.test(err.message));
  await ended;
});

test('connect failures say why: missing socket, no greeting, not QMP', async () => {
  await assert.rejects(QmpClient.connect(join(dir, 'missing.sock'), { timeoutMs: 200 }), (err: unknown) => {
    assert.ok(err instanceof QmpConnectError);
    assert.equal(err.code, 'ConnectFailed');
    assert.match(err.message, /ENOENT.*QEMU is not running/);
    return true;
  });
  const silent = await fake();
  silent.greet = undefined; // what a second client sees while QEMU serves the first
  await assert.rejects(QmpClient.connect(silent.path, { timeoutMs: 150 }), (err: unknown) => {
    assert.ok(err instanceof QmpConnectError);
    assert.match(err.message, /no QMP greeting .* within 150 ms: another client may hold the socket/);
    return true;
  });
  const other = await fake();
  other.greet = (conn) => conn.write('SSH-2.0-OpenSSH\r\n{"hello": 1}\r\n');
  await assert.rejects(QmpClient.connect(other.path, { timeoutMs: 1000 }), (err: unknown) => {
    assert.ok(err instanceof QmpProtocolError);
    assert.equal(err.code, 'ProtocolError');
    assert.match(err.message, /did not greet like QMP/);
    return true;
  });
  const refusing = await fake();
  refusing.capabilities = (msg, conn) => send(conn, { error: { class: 'GenericError', desc: 'capabilities refused' }, id: msg.id });
  await assert.rejects(QmpClient.connect(refusing.path, { timeoutMs: 1000 }), (err: unknown) => {
    assert.ok(err instanceof QmpProtocolError);
    assert.match(err.message, /refused qmp_capabilities: capabilities refused/);
    return true;
  });
});

test('connect with waitForSocket retries until QEMU creates the socket', async () => {
  const path = join(dir, 'late.sock');
  const f = new FakeQmp(path);
  fakes.push(f);
  setTimeout(() => void f.listen(), 150);
  const t0 = Date.now();
  const c = await QmpClient.connect(path, { timeoutMs: 3000, waitForSocket: true });
  clients.push(c);
  assert.ok(Date.now() - t0 >= 100);
  assert.deepEqual(await c.execute('query-status'), {});
});
