/**
 * The guest agent client against a fake qemu-ga on a unix socket: the sync that drops stale
 * output, framing (answers split anywhere, several per chunk, braces inside strings), errors,
 * timeouts and the resync after one, ping against a silent peer and a missing socket, the
 * fsfreeze commands, one connection at a time per socket, the freeze scope around a work
 * (thaw after a failing work, at the deadline, work unfrozen when the freeze fails) and the
 * AgentConnected watcher.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import { MessageSplitter, QgaClient, fsfreezeFreeze, fsfreezeStatus, fsfreezeThaw, ping, withAgent } from './client.ts';
import { QgaClosedError, QgaConnectError, QgaError, QgaTimeoutError } from './errors.ts';
import { withFrozenGuest } from './freeze.ts';
import { agentConnected, watchAgent } from './watch.ts';

type Msg = { execute: string; arguments?: Record<string, unknown>; id?: number };

/** A qemu-ga double: answers like qemu-ga 7.2 (including its complaint about the 0xFF), with knobs for misbehaving. */
class FakeAgent {
  readonly server: net.Server;
  readonly received: Msg[] = [];
  /** The connection (numbered from 1) each received command came on. */
  readonly receivedOn: number[] = [];
  readonly conns = new Set<net.Socket>();
  connections = 0;
  state: 'thawed' | 'frozen' = 'thawed';
  /** Answer nothing at all (a guest without an agent, or paused). */
  silent = false;
  /** Written on connect, before anything is asked (output meant for an earlier client). */
  stale = '';
  /** Write answers one byte at a time. */
  trickle = false;
  /** Commands to leave unanswered (the answer comes when `release` is called). */
  hold = new Set<string>();
  held: (() => void)[] = [];
  /** Per command: answer with this instead. */
  override: Record<string, (msg: Msg) => unknown> = {};

  constructor(readonly path: string) {
    this.server = net.createServer((conn) => {
      this.conns.add(conn);
      const number = ++this.connections;
      conn.on('close', () => this.conns.delete(conn));
      conn.on('error', () => undefined);
      if (this.stale) conn.write(this.stale);
      let buf = Buffer.alloc(0);
      conn.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        for (;;) {
          const ff = buf.indexOf(0xff);
          const nl = buf.indexOf(0x0a);
          if (ff >= 0 && (nl < 0 || ff < nl)) {
            buf = buf.subarray(ff + 1);
            this.answer(conn, { error: { class: 'GenericError', desc: "JSON parse error, stray '\uFFFD'" } });
            continue;
          }
          if (nl < 0) break;
          const line = buf.subarray(0, nl).toString('utf8').trim();
          buf = buf.subarray(nl + 1);
          if (line) {
            this.receivedOn.push(number);
            this.onCommand(conn, JSON.parse(line) as Msg);
          }
        }
      });
    });
  }

  private onCommand(conn: net.Socket, msg: Msg): void {
    this.received.push(msg);
    if (this.silent) return;
    const reply = (body: Record<string, unknown>) => {
      const out = { ...body, ...(msg.id !== undefined ? { id: msg.id } : {}) };
      if (this.hold.has(msg.execute)) this.held.push(() => this.answer(conn, out));
      else this.answer(conn, out);
    };
    if (this.override[msg.execute]) return reply(this.override[msg.execute](msg) as Record<string, unknown>);
    switch (msg.execute) {
      case 'guest-sync-delimited':
        this.write(conn, Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: msg.arguments?.id }) + '\n')]));
        return;
      case 'guest-ping':
        return reply({ return: {} });
      case 'guest-fsfreeze-status':
        return reply({ return: this.state });
      case 'guest-fsfreeze-freeze':
        if (this.state === 'frozen')
          return reply({ error: { class: 'GenericError', desc: 'Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state' } });
        this.state = 'frozen';
        return reply({ return: 1 });
      case 'guest-fsfreeze-thaw': {
        const n = this.state === 'frozen' ? 1 : 0;
        this.state = 'thawed';
        return reply({ return: n });
      }
      default:
        return reply({ error: { class: 'CommandNotFound', desc: `The command ${msg.execute} has not been found` } });
    }
  }

  answer(conn: net.Socket, body: unknown): void {
    this.write(conn, Buffer.from(JSON.stringify(body) + '\n'));
  }

  private write(conn: net.Socket, data: Buffer): void {
    if (!this.trickle) {
      conn.write(data);
      return;
    }
    for (const b of data) conn.write(Buffer.from([b]));
  }

  release(): void {
    for (const h of this.held.splice(0)) h();
  }

  commands(): string[] {
    return this.received.map((m) => m.execute);
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, resolve));
  }

  close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

let dir: string;
let agent: FakeAgent;
let n = 0;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qga-test-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});
async function fresh(): Promise<FakeAgent> {
  agent = new FakeAgent(join(dir, `qga-${n++}.sock`));
  await agent.listen();
  return agent;
}
afterEach(async () => {
  await agent?.close();
});

test('the splitter cuts objects out of a byte stream: split anywhere, braces in strings, 0xFF drops a partial one', () => {
  const got: unknown[] = [];
  const s = new MessageSplitter((t) => got.push(JSON.parse(t)));
  const text = '{"return": {"a": "}{\\"x", "b": [1, {"c": "é"}]}}\r\n{"return": 2}\n';
  for (const b of Buffer.from(text)) s.push(Buffer.from([b]));
  s.push(Buffer.from('{"return": {"half": '));
  s.push(Buffer.from([0xff]));
  s.push(Buffer.from('{"return": 3}{"return": 4}'));
  assert.deepEqual(got, [{ return: { a: '}{"x', b: [1, { c: 'é' }] } }, { return: 2 }, { return: 3 }, { return: 4 }]);
});

test('connect syncs past stale output; commands get their own answers', async () => {
  const a = await fresh();
  a.stale = '{"return": 12345}\n{"return": {"old": true}, "id": 9}\n{"return": {"cut off": ';
  const c = await QgaClient.connect(a.path);
  try {
    assert.deepEqual(a.commands(), ['guest-sync-delimited']);
    await c.ping();
    assert.equal(await c.fsfreezeStatus(), 'thawed');
    assert.deepEqual(await c.execute('guest-info-x').catch((e: unknown) => e instanceof QgaError && [e.errorClass, e.code]), [
      'CommandNotFound',
      'CommandFailed',
    ]);
  } finally {
    await c.close();
  }
});

test('answers trickling in byte by byte are put together', async () => {
  const a = await fresh();
  a.trickle = true;
  a.override['guest-info'] = () => ({ return: { version: '7.2.22', supported_commands: [{ name: 'guest-ping', enabled: true }] } });
  const c = await QgaClient.connect(a.path);
  try {
    assert.deepEqual(await c.execute('guest-info'), { version: '7.2.22', supported_commands: [{ name: 'guest-ping', enabled: true }] });
  } finally {
    await c.close();
  }
});

test('a command without an answer times out; the next one resyncs and its late answer is dropped', async () => {
  const a = await fresh();
  a.hold.add('guest-fsfreeze-status');
  const c = await QgaClient.connect(a.path);
  try {
    await assert.rejects(c.fsfreezeStatus(200), (e: unknown) => e instanceof QgaTimeoutError && e.code === 'Timeout' && /200 ms/.test(e.message));
    a.hold.clear();
    a.release(); // the late answer: "thawed", which must not be taken for the next command's
    a.override['guest-fsfreeze-status'] = () => ({ return: 'frozen' });
    assert.equal(await c.fsfreezeStatus(), 'frozen');
    assert.deepEqual(a.commands(), ['guest-sync-delimited', 'guest-fsfreeze-status', 'guest-sync-delimited', 'guest-fsfreeze-status']);
  } finally {
    await c.close();
  }
});

test('ping: true when the agent answers, false quickly when nothing answers or nothing listens', async () => {
  const a = await fresh();
  assert.equal(await ping(a.path), true);
  a.silent = true;
  const t0 = Date.now();
  assert.equal(await ping(a.path, { timeoutMs: 300 }), false);
  const ms = Date.now() - t0;
  assert.ok(ms >= 250 && ms < 2000, `gave up after ${ms} ms`);
  assert.equal(await ping(join(dir, 'missing.sock')), false);
  await assert.rejects(QgaClient.connect(join(dir, 'missing.sock')), (e: unknown) => e instanceof QgaConnectError && /ENOENT/.test(e.message));
});

test('fsfreeze freeze, status and thaw', async () => {
  const a = await fresh();
  assert.equal(await fsfreezeStatus(a.path), 'thawed');
  assert.equal(await fsfreezeFreeze(a.path), 1);
  assert.equal(await fsfreezeStatus(a.path), 'frozen');
  await assert.rejects(fsfreezeFreeze(a.path), (e: unknown) => e instanceof QgaError && /frozen state/.test(e.desc));
  assert.equal(await fsfreezeThaw(a.path), 1);
  assert.equal(await fsfreezeThaw(a.path), 0);
  assert.equal(await fsfreezeStatus(a.path), 'thawed');
});

test('one connection at a time per socket: concurrent callers take turns', async () => {
  const a = await fresh();
  const results = await Promise.all([ping(a.path), fsfreezeStatus(a.path), withAgent(a.path, (c) => c.fsfreezeThaw()), ping(a.path)]);
  assert.deepEqual(results, [true, 'thawed', 0, true]);
  assert.equal(a.connections, 4);
  // Each connection's commands form one block: no caller talked while another one's turn ran.
  assert.deepEqual(a.receivedOn, [1, 1, 2, 2, 3, 3, 4, 4]);
});

test('a connection closed mid-command rejects it', async () => {
  const a = await fresh();
  a.hold.add('guest-fsfreeze-freeze');
  const c = await QgaClient.connect(a.path);
  const pending = c.fsfreezeFreeze();
  await new Promise((resolve) => setTimeout(resolve, 50));
  for (const conn of a.conns) conn.destroy();
  await assert.rejects(pending, (e: unknown) => e instanceof QgaClosedError && e.code === 'Closed');
  assert.equal(c.closed, true);
  await assert.rejects(c.ping(), QgaClosedError);
});

test('withFrozenGuest: frozen during the work, thawed after it, also when it fails', async () => {
  const a = await fresh();
  const seen: string[] = [];
  const { value, freeze } = await withFrozenGuest(a.path, async () => {
    seen.push(a.state);
    return 42;
  });
  assert.equal(value, 42);
  assert.deepEqual(seen, ['frozen']);
  assert.equal(a.state, 'thawed');
  assert.equal(freeze.quiesced, true);
  assert.equal(freeze.filesystems, 1);
  assert.equal(freeze.problem, undefined);

  await assert.rejects(
    withFrozenGuest(a.path, async () => {
      seen.push(a.state);
      throw new Error('disk switch failed');
    }),
    /disk switch failed/,
  );
  assert.deepEqual(seen, ['frozen', 'frozen']);
  assert.equal(a.state, 'thawed', 'thawed although the work failed');
  assert.deepEqual(
    a.commands().filter((c) => c.startsWith('guest-fsfreeze')),
    ['guest-fsfreeze-freeze', 'guest-fsfreeze-thaw', 'guest-fsfreeze-freeze', 'guest-fsfreeze-thaw'],
  );
});

test('withFrozenGuest: a work that overruns the deadline finds the guest thawed', async () => {
  const a = await fresh();
  const seen: string[] = [];
  const { freeze } = await withFrozenGuest(
    a.path,
    async () => {
      seen.push(a.state);
      await new Promise((resolve) => setTimeout(resolve, 400));
      seen.push(a.state);
    },
    { deadlineMs: 100 },
  );
  assert.deepEqual(seen, ['frozen', 'thawed']);
  assert.equal(freeze.quiesced, false);
  assert.match(freeze.problem ?? '', /deadline/);
  assert.equal(a.state, 'thawed');
});

test('withFrozenGuest: the work still runs, unfrozen, when the freeze fails or no agent answers', async () => {
  const a = await fresh();
  a.override['guest-fsfreeze-freeze'] = () => ({ error: { class: 'GenericError', desc: 'failed to freeze /: Operation not supported' } });
  let ran = 0;
  const failed = await withFrozenGuest(a.path, async () => {
    ran++;
    return a.state;
  });
  assert.equal(failed.value, 'thawed');
  assert.equal(failed.freeze.quiesced, false);
  assert.match(failed.freeze.problem ?? '', /Operation not supported/);
  assert.ok(a.commands().includes('guest-fsfreeze-thaw'), 'thawed in case part of it froze');

  a.silent = true;
  const t0 = Date.now();
  const none = await withFrozenGuest(
    a.path,
    async () => {
      ran++;
    },
    { connectTimeoutMs: 300 },
  );
  assert.ok(Date.now() - t0 < 3000);
  assert.equal(none.freeze.quiesced, false);
  assert.match(none.freeze.problem ?? '', /could not be reached/);
  assert.equal(ran, 2);
});

test('watchAgent reports the agent coming and going; agentConnected sets and removes the condition', async () => {
  const a = await fresh();
  a.silent = true;
  const seen: boolean[] = [];
  const stop = watchAgent(a.path, (up) => seen.push(up), { silentIntervalMs: 50, connectedIntervalMs: 50 });
  try {
    await until(() => seen.length === 1);
    a.silent = false;
    await until(() => seen.length === 2);
    a.silent = true;
    await until(() => seen.length === 3);
  } finally {
    stop();
  }
  assert.deepEqual(seen, [false, true, false]);

  const status: Record<string, unknown> = { conditions: [{ type: 'Ready', status: 'True' }] };
  assert.equal(agentConnected(status, false), false);
  assert.equal(agentConnected(status, true), true);
  assert.deepEqual(
    (status.conditions as { type: string; status: string }[]).map((c) => [c.type, c.status]),
    [
      ['Ready', 'True'],
      ['AgentConnected', 'True'],
    ],
  );
  assert.equal(agentConnected(status, true), false);
  assert.equal(agentConnected(status, false), true);
  assert.deepEqual(
    (status.conditions as { type: string }[]).map((c) => c.type),
    ['Ready'],
  );
});

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
