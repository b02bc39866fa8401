/**
 * The agent's console handlers with a real QEMU (TCG) running the tiny guest: the serial
 * console over a websocket (boot output, a shell command, take-over by a second connection),
 * VNC (the RFB greeting), the serial log (whole, tail, follow), and the refusals before the
 * upgrade. The handlers sit on a plain local HTTP server: the token check is the endpoint's.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, appendFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket, { type RawData } from 'ws';
import { ensureTinyGuest, tinyOverlay, tinyQemuArgv, TINY_SERIAL, type TinyGuest } from '@vessel/guest';
import { consoleHandlers, TAKEN_OVER_REASON, type ConsoleHandlers } from './console.ts';
import { agentRoutes } from './endpoint.ts';
import { launch, terminate } from './qemu/process.ts';

let guest: TinyGuest;
let root: string;
let runDir: string;
let handlers: ConsoleHandlers;
let server: http.Server;
let base: string;
/** The first console, connected right after launch so that it sees the whole boot. */
let first: Session;

const since0 = performance.now();
const log = (what: string) => console.log(`# ${((performance.now() - since0) / 1000).toFixed(1)} s ${what}`);

interface Session {
  ws: WebSocket;
  text: () => string;
  closed: Promise<{ code: number; reason: string }>;
}

before(async () => {
  guest = await ensureTinyGuest();
  root = await mkdtemp(join(tmpdir(), 'vessel-console-'));
  runDir = join(root, 'vms', 'default', 'tiny');
  handlers = consoleHandlers({ runDirFor: (ns, name) => (name === 'ghost' ? undefined : join(root, 'vms', ns, name)), pollMs: 100 });
  // The endpoint's own routes and error answers, minus TLS and the token check.
  const unused = () => Promise.reject(new Error('not served in this test'));
  const routes = agentRoutes({
    consoles: handlers,
    volumes: { uploadStatus: unused, receive: unused },
    vms: { act: unused, guestInfo: unused, memoryDump: unused },
  });
  server = http.createServer((req, res) => routes.request(req, res));
  server.on('upgrade', (req, socket, head: Buffer) => routes.upgrade(req, socket, head));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `127.0.0.1:${(server.address() as AddressInfo).port}`;

  await mkdir(runDir, { recursive: true });
  const disk = tinyOverlay(guest, join(root, 'tiny.qcow2'));
  await launch({
    runDir,
    vnc: true,
    vm: { namespace: 'default', name: 'tiny' },
    argv: tinyQemuArgv(guest, disk, ['-vga', 'std']),
  });
  log('launched');
  first = await consoleSession();
});

after(async () => {
  handlers?.close();
  if (runDir) await terminate(runDir, { graceMs: 2000 });
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  if (root) await rm(root, { recursive: true, force: true });
});

function open(path: string, protocols: string[] = ['plain.kubevirt.io']): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${base}${path}`, protocols);
    // Paused until the caller listens: the VNC greeting may come with the 101.
    ws.once('open', () => {
      ws.pause();
      resolve(ws);
    });
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => {
        body += d;
      });
      res.on('end', () => reject(Object.assign(new Error(`HTTP ${res.statusCode}: ${body}`), { status: res.statusCode, body })));
    });
    ws.once('error', reject);
  });
}

async function consoleSession(): Promise<Session> {
  const ws = await open('/v1/console/default/tiny');
  let text = '';
  ws.on('message', (d: RawData) => {
    text += (d as Buffer).toString('latin1');
  });
  ws.resume();
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  return { ws, text: () => text, closed };
}

async function until(what: string, check: () => boolean, timeoutMs: number, every?: () => void, everyMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let next = 0;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    if (every && Date.now() >= next) {
      every();
      next = Date.now() + everyMs;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

function get(path: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => http.get(`http://${base}${path}`, resolve).on('error', reject));
}

async function body(res: http.IncomingMessage): Promise<string> {
  let s = '';
  for await (const c of res) s += (c as Buffer).toString('latin1');
  return s;
}

test('console: the boot output, a shell command, and take-over by a second connection', { timeout: 200_000 }, async () => {
  await until('the ready marker on the console', () => first.text().includes(TINY_SERIAL.ready), 150_000);
  log('marker seen on the console');
  assert.match(first.text(), /Linux version/);
  // The guest's serial shell starts on Enter; send the command until it has run.
  first.ws.send('\n');
  await until(
    'hello-42 from the serial shell',
    () => first.text().includes('hello-42'),
    30_000,
    () => first.ws.send('echo hello-$((6*7))\n'),
  );
  log('shell answered');

  const second = await consoleSession();
  const old = await first.closed;
  assert.equal(old.code, 1000);
  assert.equal(old.reason, TAKEN_OVER_REASON);
  await until(
    'again-6 on the second console',
    () => second.text().includes('again-6'),
    30_000,
    () => second.ws.send('echo again-$((2*3))\n'),
  );
  second.ws.close();
  await second.closed;
});

test('vnc: the websocket carries the RFB greeting', { timeout: 30_000 }, async () => {
  const ws = await open('/v1/vnc/default/tiny', ['binary.kubevirt.io']);
  assert.equal(ws.protocol, 'binary.kubevirt.io');
  const greeting = await new Promise<string>((resolve) => {
    ws.once('message', (d: RawData) => resolve((d as Buffer).toString('latin1')));
    ws.resume();
  });
  assert.match(greeting, /^RFB 003\.008\n/);
  ws.close();
});

test('serial log: whole, tail, and follow', { timeout: 30_000 }, async () => {
  const res = await get('/v1/serial-log/default/tiny');
  assert.equal(res.statusCode, 200);
  assert.match(res.headers['content-type'] ?? '', /^text\/plain/);
  const all = await body(res);
  assert.match(all, /Linux version/);
  assert.ok(all.includes(TINY_SERIAL.ready));

  const tail = await body(await get('/v1/serial-log/default/tiny?tailBytes=100'));
  assert.ok(tail.length > 0 && tail.length <= 100, `tail of ${tail.length} bytes`);

  // Follow from now: the guest's counter prints a new line every second.
  const follow = await get('/v1/serial-log/default/tiny?follow=true&tailBytes=0');
  let seen = '';
  follow.on('data', (d: Buffer) => {
    seen += d.toString('latin1');
  });
  await until('a new counter line through follow', () => TINY_SERIAL.counter.test(seen), 15_000);
  follow.destroy();
});

test('serial log follow ends when the run directory goes away', { timeout: 15_000 }, async () => {
  const dir = join(root, 'vms', 'default', 'gone');
  await mkdir(dir, { recursive: true });
  await appendFile(join(dir, 'serial.log'), 'line one\n');
  const res = await get('/v1/serial-log/default/gone?follow=1');
  let seen = '';
  const ended = new Promise<void>((resolve) => res.on('end', resolve));
  res.on('data', (d: Buffer) => {
    seen += d.toString();
  });
  await until('the first line', () => seen.includes('line one'), 5000);
  await appendFile(join(dir, 'serial.log'), 'line two\n');
  await until('the appended line', () => seen.includes('line two'), 5000);
  await rm(dir, { recursive: true });
  await ended;
});

test('refusals before the upgrade: unknown VM 404, VM not running 409, bad tailBytes 400', async () => {
  await assert.rejects(
    open('/v1/console/default/ghost'),
    (e: Error & { status?: number; body?: string }) => e.status === 404 && /not on this node/.test(e.body ?? ''),
  );
  await mkdir(join(root, 'vms', 'default', 'stopped'), { recursive: true });
  await assert.rejects(
    open('/v1/console/default/stopped'),
    (e: Error & { status?: number; body?: string }) => e.status === 409 && /not running/.test(e.body ?? ''),
  );
  await assert.rejects(open('/v1/vnc/default/stopped'), (e: Error & { status?: number }) => e.status === 409);
  const missing = await get('/v1/serial-log/default/ghost');
  assert.equal(missing.statusCode, 404);
  assert.match(JSON.parse(await body(missing)).message, /no run directory/);
  const bad = await get('/v1/serial-log/default/tiny?tailBytes=-1');
  assert.equal(bad.statusCode, 400);
  await body(bad);
});
