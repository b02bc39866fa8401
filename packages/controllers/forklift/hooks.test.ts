/**
 * Hooks: only scripts registered in the hook directory run (names, traversal and symlinks out
 * refused), with the payload on stdin and the deadline; URL hooks refuse link-local and (unless
 * allowed) loopback addresses, and POST the payload; an image gets a Warn concern.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HOOK_SCRIPT_ANNOTATION, HOOK_URL_ANNOTATION, hookConcerns, hookTarget, runHook, type HookPayload } from './hooks.ts';

let dir: string;
let hookDir: string;
let server: Server;
let port = 0;
const bodies: string[] = [];
const payload: HookPayload = {
  step: 'PreHook',
  plan: { metadata: { name: 'p' } },
  vm: { id: '1', name: 'web', targetName: 'web', namespace: 't' },
  migration: { name: 'm', namespace: 'n' },
};
const hook = (ann: Record<string, string>, spec: object = {}) => ({ metadata: { annotations: ann }, spec });

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hooks-test-'));
  hookDir = join(dir, 'hooks');
  await mkdir(hookDir);
  const marker = join(dir, 'marker.json');
  await writeFile(join(hookDir, 'mark'), `#!/bin/sh\ncat > ${marker}\n`);
  await writeFile(join(hookDir, 'fail'), '#!/bin/sh\necho "no disk space" >&2\nexit 3\n');
  await writeFile(join(hookDir, 'slow'), '#!/bin/sh\nsleep 30\necho done\n');
  await writeFile(join(hookDir, 'plain'), 'not executable\n');
  await writeFile(join(dir, 'outside'), '#!/bin/sh\ntouch /tmp/never\n');
  for (const f of ['mark', 'fail', 'slow', 'outside'].map((n) => (n === 'outside' ? join(dir, n) : join(hookDir, n)))) await chmod(f, 0o755);
  await symlink(join(dir, 'outside'), join(hookDir, 'link-out'));
  server = createServer((req, res) => {
    let b = '';
    req.on('data', (c: Buffer) => (b += c.toString()));
    req.on('end', () => {
      bodies.push(b);
      res.statusCode = req.url === '/fail' ? 500 : 204;
      res.end(req.url === '/fail' ? 'hook said no' : undefined);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as { port: number }).port;
});

after(async () => {
  server?.close();
  await rm(dir, { recursive: true, force: true });
});

test('hookTarget: one annotation, a plain script name or an http(s) URL', () => {
  assert.deepEqual(hookTarget(hook({ [HOOK_SCRIPT_ANNOTATION]: 'mark' })), { kind: 'script', name: 'mark' });
  assert.equal(hookTarget(hook({ [HOOK_URL_ANNOTATION]: 'https://hooks.example/x' })).kind, 'url');
  for (const bad of [
    { [HOOK_SCRIPT_ANNOTATION]: '../outside' },
    { [HOOK_SCRIPT_ANNOTATION]: '/bin/sh' },
    { [HOOK_URL_ANNOTATION]: 'file:///etc/passwd' },
    {},
  ] as Record<string, string>[])
    assert.throws(() => hookTarget(hook(bad)), /HookNotValid|not a script name|only http|runs no container images/, JSON.stringify(bad));
});

test('hookConcerns: Ready for a registered script, Warn for an image, Critical for what cannot run', async () => {
  const ok = await hookConcerns(hook({ [HOOK_SCRIPT_ANNOTATION]: 'mark' }, { image: 'quay.io/konveyor/hook-runner' }), { hookDir });
  assert.deepEqual(
    ok.map((c) => [c.type, c.category]),
    [
      ['ImageNotRun', 'Warn'],
      ['Ready', 'Required'],
    ],
  );
  for (const name of ['plain', 'link-out', 'missing'])
    assert.match((await hookConcerns(hook({ [HOOK_SCRIPT_ANNOTATION]: name }), { hookDir }))[0].message, /is not registered/, name);
  assert.match((await hookConcerns(hook({ [HOOK_SCRIPT_ANNOTATION]: 'mark' }), {}))[0].message, /no hook directory/);
  assert.equal((await hookConcerns(hook({}, { image: 'x' }), { hookDir }))[0].type, 'HookNotValid');
});

test('runHook: a script gets the payload on stdin; a failure and a passed deadline are reasons', async () => {
  await runHook(hook({ [HOOK_SCRIPT_ANNOTATION]: 'mark' }), payload, { hookDir });
  assert.deepEqual(JSON.parse(await readFile(join(dir, 'marker.json'), 'utf8')), payload);
  await assert.rejects(runHook(hook({ [HOOK_SCRIPT_ANNOTATION]: 'fail' }), payload, { hookDir }), /script fail: exit 3: no disk space/);
  const t0 = Date.now();
  await assert.rejects(runHook(hook({ [HOOK_SCRIPT_ANNOTATION]: 'slow' }, { deadline: 1 }), payload, { hookDir }), /deadline of 1 s passed/);
  assert.ok(Date.now() - t0 < 10_000);
  await assert.rejects(runHook(hook({ [HOOK_SCRIPT_ANNOTATION]: 'link-out' }), payload, { hookDir }), /not registered/);
});

test('runHook: a URL gets a POST of the payload; refused addresses give one message', async () => {
  await runHook(hook({ [HOOK_URL_ANNOTATION]: `http://127.0.0.1:${port}/ok` }), payload, { allowLoopback: true });
  assert.deepEqual(JSON.parse(bodies.at(-1)!), payload);
  await assert.rejects(runHook(hook({ [HOOK_URL_ANNOTATION]: `http://127.0.0.1:${port}/fail` }), payload, { allowLoopback: true }), /HTTP 500: hook said no/);
  const n = bodies.length;
  for (const url of [`http://127.0.0.1:${port}/ok`, `http://localhost:${port}/ok`, 'http://169.254.169.254/latest', 'http://[::1]:1/'])
    await assert.rejects(runHook(hook({ [HOOK_URL_ANNOTATION]: url }), payload, {}), /is unreachable from the controllers/, url);
  assert.equal(bodies.length, n, 'nothing reached the loopback server');
});
