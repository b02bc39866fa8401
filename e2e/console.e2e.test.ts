/**
 * Console, VNC and serial log end to end: the real CLI (a child process) -> the API server's
 * subresources (auth, RBAC, VMI checks) -> the node agent's endpoint (token, pinned
 * certificate) -> a real QEMU running the tiny guest. The VM runtime does not start the VM:
 * the test launches QEMU into the agent's run directory itself and then writes the VMI's status
 * (Running on node-a), so the runtime only adopts it. Controllers stay off so nothing else acts
 * on the VMIs.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Client, StatusError, type KubeObject, type ResourceRef } from '@vessel/client';
import { ensureTinyGuest, tinyOverlay, tinyQemuArgv, TINY_SERIAL, type TinyGuest } from '../guest/tiny.ts';
import { launch, terminate, waitForSerial } from '../packages/agent/qemu/process.ts';
import { connectSubresource } from '../packages/cli/commands/console.ts';
import { startVessel, type Vessel } from './harness.ts';

const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TSX = join(ROOT, 'node_modules/tsx/dist/loader.mjs');
/**
 * The CLI as bin/vessel runs it, plus console/vnc/logs for as long as program.ts does not
 * register them itself.
 */
const ENTRY = `
import { buildProgram } from ${JSON.stringify(join(ROOT, 'packages/cli/program.ts'))};
import { reportError } from ${JSON.stringify(join(ROOT, 'packages/cli/errors.ts'))};
import { registerConsole } from ${JSON.stringify(join(ROOT, 'packages/cli/commands/console.ts'))};
import { registerVnc } from ${JSON.stringify(join(ROOT, 'packages/cli/commands/vnc.ts'))};
import { registerLogs } from ${JSON.stringify(join(ROOT, 'packages/cli/commands/logs.ts'))};
const program = buildProgram();
const has = (n) => program.commands.some((c) => c.name() === n);
if (!has('console')) registerConsole(program);
if (!has('vnc')) registerVnc(program);
if (!has('logs')) registerLogs(program);
try { await program.parseAsync(process.argv.slice(1), { from: 'user' }); } catch (e) { reportError(e); }
`;

let v: Vessel;
let runDir: string;
let otherKubeconfig: string;

const since0 = performance.now();
const log = (what: string) => console.log(`# ${((performance.now() - since0) / 1000).toFixed(1)} s ${what}`);

function vessel(args: string[], kubeconfig = v.kubeconfig): ChildProcessWithoutNullStreams {
  return spawn(process.execPath, ['--import', TSX, '--input-type=module', '-e', ENTRY, '--', '--kubeconfig', kubeconfig, ...args], {
    cwd: ROOT,
    env: { ...process.env, KUBECONFIG: '' },
  });
}

interface Run {
  child: ChildProcessWithoutNullStreams;
  out: () => string;
  err: () => string;
  exited: Promise<number | null>;
}

/** Every CLI started, so that a failed test leaves none behind. */
const children = new Set<ChildProcessWithoutNullStreams>();

function start(args: string[], kubeconfig?: string): Run {
  const child = vessel(args, kubeconfig);
  children.add(child);
  child.on('close', () => children.delete(child));
  let out = '',
    err = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString('latin1');
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, out: () => out, err: () => err, exited };
}

async function runCli(args: string[], kubeconfig?: string, timeoutMs = 30_000): Promise<{ code: number | null; out: string; err: string }> {
  const r = start(args, kubeconfig);
  r.child.stdin.end();
  const timer = setTimeout(() => r.child.kill('SIGKILL'), timeoutMs);
  const code = await r.exited;
  clearTimeout(timer);
  return { code, out: r.out(), err: r.err() };
}

async function until(what: string, check: () => boolean, timeoutMs: number, every?: () => void, everyMs = 2000, cli?: Run): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let next = 0;
  while (!check()) {
    if (Date.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${cli ? `; the CLI printed:\n${cli.out().slice(-2000)}\n${cli.err().slice(-2000)}` : ''}`,
      );
    if (every && Date.now() >= next) {
      every();
      next = Date.now() + everyMs;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

function vmi(name: string): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: 'default' },
    spec: { domain: { devices: {}, resources: { requests: { memory: '64Mi' } } } },
  };
}

before(async () => {
  const guest = ensureTinyGuest();
  v = await startVessel({ agent: { nodeName: 'node-a' }, controllers: false });
  const agent = v.agent!;

  // No status yet, so no controller or agent acts on them until the test says they run.
  await v.client.create(VMI, vmi('tiny'));
  await v.client.create(VMI, vmi('pending'));

  const r = await v.client.request<{ token: string }>('POST', '/vessel/v1/tokens', { body: { user: 'mallory', groups: ['vessel:tenant:other'] } });
  otherKubeconfig = join(v.dataDir, 'kubeconfig-other');
  await writeFile(otherKubeconfig, readFileSync(v.kubeconfig, 'utf8').replace(/token: .*/, `token: ${r.token}`));

  runDir = join(agent.dataDir, 'vms', 'default', 'tiny');
  await mkdir(runDir, { recursive: true });
  const g = await guest;
  tinyOverlay(g, join(v.dataDir, 'tiny.qcow2'));
});

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  if (runDir) await terminate(runDir, { graceMs: 2000 });
  await v?.close();
});

let running: Promise<void> | undefined;

/**
 * Launches QEMU for VMI tiny (once), then marks the VMI Running on node-a. In that order: the
 * agent's VM runtime adopts a QEMU whose vm.json carries the VMI's uid, while a Running VMI of
 * its node without a QEMU would be failed as crashed.
 */
function runTiny(): Promise<void> {
  running ??= (async () => {
    const g = await ensureTinyGuest();
    const current = await v.client.get(VMI, 'tiny', { namespace: 'default' });
    await launchTiny(g, current.metadata!.uid!);
    log('launched');
    // VMIs have no status subresource (as upstream: virt-handler writes status through the object).
    await v.client.update(VMI, { ...current, status: { phase: 'Running', nodeName: 'node-a' } });
  })();
  return running;
}

async function launchTiny(g: TinyGuest, uid: string): Promise<void> {
  await launch({
    runDir,
    vnc: true,
    vm: { uid, namespace: 'default', name: 'tiny' },
    argv: tinyQemuArgv(g, join(v.dataDir, 'tiny.qcow2'), ['-vga', 'std']),
  });
}

test('vessel console waits for the VM, shows its boot, runs a command, and leaves on ^]', { timeout: 90_000 }, async () => {
  // Started before the VM runs: the server answers 409 (VMI is not running) and the CLI waits (--timeout).
  const c = start(['console', 'tiny', '--timeout', '1']);
  await until('the CLI to wait for the VM', () => /Waiting for VMI default\/tiny/.test(c.err()), 20_000);
  await runTiny();
  await until('the console connection', () => c.err().includes('Successfully connected to tiny console. The escape sequence is ^]'), 30_000, undefined, 0, c);
  await until('the ready marker through the CLI', () => c.out().includes(TINY_SERIAL.ready), 60_000);
  log('marker seen through vessel console');
  c.child.stdin.write('\n');
  await until(
    'hello-42 from the serial shell',
    () => c.out().includes('hello-42'),
    30_000,
    () => c.child.stdin.write('echo hello-$((6*7))\n'),
  );
  c.child.stdin.write(Buffer.from([0x1d]));
  assert.equal(await c.exited, 0, c.err());
});

test("another tenant's token is refused with 403 (console, vnc, logs)", { timeout: 60_000 }, async () => {
  await runTiny();
  const results = await Promise.all([
    runCli(['console', 'tiny', '--timeout', '0'], otherKubeconfig),
    runCli(['vnc', 'tiny', '--proxy-only'], otherKubeconfig),
    runCli(['logs', 'tiny'], otherKubeconfig),
  ]);
  for (const r of results) {
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, /forbidden/i);
  }
  assert.match(results[0].err, /cannot get resource "virtualmachineinstances\/console" in API group "subresources\.kubevirt\.io"/);
  // The answer to the upgrade itself is a Status with code 403.
  const client = Client.fromKubeconfig({ explicit: otherKubeconfig });
  await assert.rejects(
    connectSubresource(client, 'default', 'tiny', 'vnc'),
    (e: unknown) => e instanceof StatusError && e.code === 403 && e.reason === 'Forbidden',
  );
  client.close();
});

test('a VMI that is not running, or missing, is refused with its reason', { timeout: 60_000 }, async () => {
  const [pending, missing, vnc] = await Promise.all([
    runCli(['console', 'pending', '--timeout', '0']),
    runCli(['console', 'nope', '--timeout', '0']),
    runCli(['vnc', 'pending', '--proxy-only']),
  ]);
  assert.equal(pending.code, 1);
  assert.match(pending.err, /VMI is not running/);
  assert.equal(vnc.code, 1);
  assert.match(vnc.err, /VMI default\/pending is not running/);
  assert.equal(missing.code, 1);
  assert.match(missing.err, /virtualmachineinstances\.kubevirt\.io "nope" not found/);
});

test('vessel vnc --proxy-only prints a port that speaks RFB', { timeout: 60_000 }, async () => {
  await runTiny();
  const c = start(['vnc', 'tiny', '--proxy-only']);
  try {
    await until('the port as JSON', () => /\{"port":\d+\}\n/.test(c.out()), 30_000, undefined, 0, c);
    const { port } = JSON.parse(c.out().trim()) as { port: number };
    const greeting = await new Promise<string>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('data', (d) => {
        resolve(d.toString('latin1'));
        s.destroy();
      });
      s.once('error', reject);
    });
    assert.match(greeting, /^RFB 003\.008\n/);
  } finally {
    c.child.kill('SIGTERM');
    await c.exited;
  }
});

test('vessel logs prints the boot log; -f follows new output', { timeout: 60_000 }, async () => {
  await runTiny();
  await waitForSerial(runDir, TINY_SERIAL.ready, 60_000);
  const r = await runCli(['logs', 'tiny']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /Linux version/);
  assert.ok(r.out.includes(TINY_SERIAL.ready));

  const f = start(['logs', 'tiny', '-f', '--tail-bytes', '0']);
  try {
    await until('a new counter line through logs -f', () => TINY_SERIAL.counter.test(f.out()), 30_000);
  } finally {
    f.child.kill('SIGINT');
    assert.equal(await f.exited, 0, f.err());
  }
});
