/**
 * Port-forward, ssh and its errors end to end: the real CLI (bin/vessel, child processes) ->
 * the API server's `portforward` subresource (auth, the VMI's state) -> the node agent (a
 * temporary slirp host forward over QMP) -> the tiny guest booted by the controllers and the
 * agent under TCG: its httpd on 80, its one-line service on 8080, its dropbear on 22 with the
 * key the user data installed. One guest for every test.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Client, loadKubeconfigFile, StatusError, type ResourceRef } from '@vessel/client';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { connectStream } from '../packages/cli/commands/console.ts';
import { forwardPath, openForward } from '../packages/cli/commands/port-forward.ts';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = join(ROOT, 'bin/vessel');
const ns = 'default';

let v: Vessel;
let key: string;
let otherKubeconfig: string;
const children = new Set<ChildProcessWithoutNullStreams>();

const since0 = performance.now();
const log = (what: string) => console.log(`# ${((performance.now() - since0) / 1000).toFixed(1)} s ${what}`);

const vessel = (args: string[], opts: { input?: string; kubeconfig?: string; timeoutMs?: number } = {}) =>
  run(BIN, ['--kubeconfig', opts.kubeconfig ?? v.kubeconfig, ...args], {
    input: opts.input,
    timeoutMs: opts.timeoutMs ?? 120_000,
    env: { ...process.env, KUBECONFIG: '' },
  });

before(async () => {
  v = await startVessel({ agent: { nodeName: 'node-a' } });
  await ensureTinyImage(v.client, () => undefined);
  key = join(v.dataDir, 'id_ed25519');
  const kg = await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'vessel-e2e', '-f', key]);
  assert.equal(kg.code, 0, kg.err);
  const pub = (await readFile(`${key}.pub`, 'utf8')).trim();
  const userData = `#!/bin/sh\nmkdir -p /root/.ssh\nchmod 700 /root /root/.ssh\necho '${pub}' >/root/.ssh/authorized_keys\nchmod 600 /root/.ssh/authorized_keys\necho VESSEL-SSH-KEY\n`;
  await v.client.create(VM, tinyVm('web', { userData }), { namespace: ns });

  const r = await v.client.request<{ token: string }>('POST', '/vessel/v1/tokens', { body: { user: 'mallory', groups: ['vessel:tenant:other'] } });
  otherKubeconfig = join(v.dataDir, 'kubeconfig-other');
  await writeFile(otherKubeconfig, readFileSync(v.kubeconfig, 'utf8').replace(/token: .*/, `token: ${r.token}`));

  await eventually(
    'the guest ready, its key installed',
    async () => {
      const text = await serialLog(v.dataDir, ns, 'web');
      // The counter's first line comes after it wrote the page httpd serves (and its first sync).
      return text.includes('VESSEL-SSH-KEY') && /VESSEL-GUEST-READY[^]*VESSEL-COUNTER \d+/.test(text) ? true : undefined;
    },
    420_000,
    500,
  );
  await eventually(
    'VMI web Running',
    async () => ((await v.client.get(VMI, 'web', { namespace: ns })).status as { phase?: string })?.phase === 'Running' || undefined,
    60_000,
  );
  log('guest ready');
});

after(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const name of ['web', 'halted']) await v?.client.delete(VM, name, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 120_000).catch(
    () => undefined,
  );
  await v?.close();
});

/** `vessel port-forward` in listening mode, until the test kills it; resolves with the local ports in order. */
async function forward(target: string, specs: string[]): Promise<{ ports: number[]; err: () => string; stop: () => void }> {
  const child = spawn(BIN, ['--kubeconfig', v.kubeconfig, 'port-forward', target, ...specs], { env: { ...process.env, KUBECONFIG: '' } });
  children.add(child);
  child.on('close', () => children.delete(child));
  let out = '',
    err = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const lines = await eventually(
    'port-forward listening',
    async () => {
      const found = [...out.matchAll(/^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)$/gm)];
      if (child.exitCode !== null) throw new Error(`port-forward exited ${child.exitCode}: ${err}`);
      return found.length === specs.length ? found : undefined;
    },
    60_000,
    100,
  );
  assert.deepEqual(
    lines.map((m) => m[2]),
    specs.map((s) => s.split(':').at(-1)),
  );
  return { ports: lines.map((m) => Number(m[1])), err: () => err, stop: () => child.kill('SIGTERM') };
}

function httpGet(port: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/', timeout: 60_000 }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => {
          body += d.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject)
      .on('timeout', function (this: http.ClientRequest) {
        this.destroy(new Error('HTTP GET timed out'));
      });
  });
}

/** Everything a TCP connection to the local port gets until it closes. */
function readTcp(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let text = '';
    s.on('data', (d: Buffer) => {
      text += d.toString();
    });
    s.on('close', () => resolve(text));
    s.on('error', reject);
    s.setTimeout(60_000, () => s.destroy(new Error('timed out')));
  });
}

test("port-forward reaches the guest's httpd and its other service, two connections at once", { timeout: 300_000 }, async () => {
  const pf = await forward('vm/web', ['0:80', '0:8080']);
  try {
    const page = await httpGet(pf.ports[0]);
    assert.equal(page.status, 200);
    assert.match(page.body, /^hostname=\S+ counter=\d+$/m, "the guest's page");
    assert.match(await readTcp(pf.ports[1]), /^hostname=\S+ counter=\d+\n$/, 'the line port 8080 serves');
    // Two connections at once, each with its own stream.
    const [a, b] = await Promise.all([httpGet(pf.ports[0]), readTcp(pf.ports[1])]);
    assert.equal(a.status, 200);
    assert.match(b, /counter=\d+/);
    log('port-forward: 80 and 8080 answered');
  } finally {
    pf.stop();
  }
});

test('port-forward --stdio carries a request and its answer (what ssh ProxyCommand uses)', { timeout: 180_000 }, async () => {
  for (let i = 0; i < 3; i++) {
    const r = await vessel(['port-forward', '--stdio', 'vmi/web', '80'], { input: 'GET / HTTP/1.0\r\n\r\n' });
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^HTTP\/1\.[01] 200 OK/, `round ${i}: stderr: ${r.err}`);
    assert.match(r.out, /hostname=\S+ counter=\d+/);
  }
});

test('a closed guest port, udp, and a missing VM are clear errors, not hangs', { timeout: 180_000 }, async () => {
  const started = Date.now();
  const closed = await vessel(['port-forward', '--stdio', 'vm/web', '81'], { timeoutMs: 60_000 });
  assert.equal(closed.code, 1);
  assert.match(closed.err, /the guest refused the connection to port 81/);
  assert.ok(Date.now() - started < 45_000, 'answered, not timed out');
  // Through a listener: the local connection is closed and the reason printed.
  const pf = await forward('vm/web', ['0:81']);
  try {
    assert.equal(await readTcp(pf.ports[0]), '');
    await eventually(
      'the refusal on stderr',
      async () => (/error: port-forward to 81: .*refused the connection to port 81/.test(pf.err()) ? true : undefined),
      30_000,
      100,
    );
  } finally {
    pf.stop();
  }
  const udp = await vessel(['port-forward', '--stdio', 'vm/web', '53/udp']);
  assert.equal(udp.code, 1);
  assert.match(udp.err, /udp port-forward is not supported: only tcp/);
  // The API refuses udp itself too (a client other than vessel).
  await assert.rejects(
    connectStream(v.client, `${forwardPath(ns, { resource: 'virtualmachines', name: 'web' }, 53)}/udp`, 'udp 53'),
    (e: StatusError) => e.code === 400 && /udp is not supported by Vessel: only tcp/.test(e.message),
  );
  const missing = await vessel(['port-forward', '--stdio', 'vm/nope', '80']);
  assert.equal(missing.code, 1);
  assert.match(missing.err, /not found/);
  // A stopped VM: the API says so (409), and the listening mode fails before it listens.
  await v.client.create(VM, tinyVm('halted', { runStrategy: 'Halted' }), { namespace: ns });
  const stopped = await vessel(['port-forward', '--stdio', 'vm/halted', '80']);
  assert.equal(stopped.code, 1);
  assert.match(stopped.err, /VMI is not running/);
  const listening = await vessel(['port-forward', 'vm/halted', '0:80'], { timeoutMs: 60_000 });
  assert.equal(listening.code, 1);
  assert.match(listening.err, /VM default\/halted is not running/);
  assert.doesNotMatch(listening.out, /Forwarding from/);
});

test('a tenant of another namespace and a viewer are refused (403), through the CLI too', { timeout: 120_000 }, async () => {
  const other = new Client(loadKubeconfigFile(otherKubeconfig));
  await assert.rejects(
    openForward(other, ns, { resource: 'virtualmachines', name: 'web' }, 80),
    (e: StatusError) => e.code === 403 && /virtualmachines\/portforward/.test(e.message),
  );
  await assert.rejects(openForward(other, ns, { resource: 'virtualmachineinstances', name: 'web' }, 80), (e: StatusError) => e.code === 403);
  // A viewer reads the VM but gets no way into the guest (KubeVirt's view role: no portforward).
  const t = await v.client.request<{ token: string }>('POST', '/vessel/v1/tokens', { body: { user: 'viewer', groups: ['vessel:view'] } });
  const viewer = new Client({ ...v.client.config, token: t.token });
  await viewer.get(VM, 'web', { namespace: ns });
  await assert.rejects(openForward(viewer, ns, { resource: 'virtualmachines', name: 'web' }, 80), (e: StatusError) => e.code === 403);
  const r = await vessel(['port-forward', '--stdio', 'vm/web', '80'], { kubeconfig: otherKubeconfig, input: 'GET / HTTP/1.0\r\n\r\n' });
  assert.equal(r.code, 1);
  assert.match(r.err, /forbidden/i);
  assert.equal(r.out, '', 'no byte of the guest reached the other tenant');
});

test('vessel ssh runs a command in the guest over dropbear, through port-forward', { timeout: 180_000 }, async () => {
  const r = await vessel(
    [
      'ssh',
      '-i',
      key,
      '--local-ssh-opts=-oStrictHostKeyChecking=no',
      '--local-ssh-opts=-oUserKnownHostsFile=/dev/null',
      '--local-ssh-opts=-oBatchMode=yes',
      '-c',
      'echo "in-guest $(hostname) $(cat /var/lib/counter)"',
      'root@vm/web',
    ],
    { timeoutMs: 150_000 },
  );
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^in-guest \S+ \d+$/m);
  log('ssh: command ran in the guest');
});
