/**
 * The agent's ways to the guest's port: slirp's connection table read right, and dialGuest to
 * an address directly and from inside a network namespace (one this test makes, with a
 * listener on its own loopback that the host's namespace cannot see).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { after, before, test } from 'node:test';
import { checkProtocol, dialGuest, parsePort, PortForwardError, slirpState } from './portforward.ts';
import { clusterAddressOf } from './vms/prepare.ts';

const USERNET =
  'Hub -1 (net-default):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n' +
  '  TCP[SYN_SENT]      19       127.0.0.1 41235       10.0.2.15    81     0     0\r\n' +
  '  TCP[HOST_FORWARD]  21       127.0.0.1 41235       10.0.2.15    81     0     0\r\n' +
  '  TCP[ESTABLISHED]   22       127.0.0.1 41236       10.0.2.15    80     0     0\r\n' +
  '  TCP[HOST_FORWARD]  20       127.0.0.1 41237       10.0.2.15    80     0     0\r\n';

test("slirp's table: the connection through a forward, never the forward itself", () => {
  assert.equal(slirpState(USERNET, 41235), 'SYN_SENT');
  assert.equal(slirpState(USERNET, 41236), 'ESTABLISHED');
  assert.equal(slirpState(USERNET, 41237), undefined, 'a forward nobody connected through');
  assert.equal(slirpState('', 41235), undefined);
});

test('ports and protocols: tcp only, udp refused with its reason', () => {
  assert.equal(parsePort('22'), 22);
  for (const bad of ['0', '65536', '-1', 'ssh', ''])
    assert.throws(
      () => parsePort(bad),
      (e: PortForwardError) => e.code === 400 && e.reason === 'InvalidPort',
    );
  assert.equal(checkProtocol(undefined), 'tcp');
  assert.equal(checkProtocol('TCP'), 'tcp');
  assert.throws(
    () => checkProtocol('udp'),
    (e: PortForwardError) => e.reason === 'UnsupportedProtocol' && /only tcp/.test(e.message),
  );
});

test("the pod interface's address for port-forward comes from IPAM, never from the VMI's status (a tenant may write it)", () => {
  const network = {
    addressOf: (_v: unknown, iface: string) => (iface === 'nic0' ? { ip: '10.244.1.7', mac: '0a:58:0a:f4:01:07', cidr: '10.244.0.0/16' } : undefined),
  };
  const vmi = (binding: Record<string, unknown>, status: unknown = {}) => ({
    metadata: { name: 'web', namespace: 'a' },
    spec: { domain: { devices: { interfaces: [{ name: 'nic0', ...binding }] } }, networks: [{ name: 'nic0', pod: {} }] },
    status,
  });
  assert.equal(clusterAddressOf(vmi({ bridge: {} }, { interfaces: [{ name: 'nic0', ipAddress: '10.233.0.1' }] }), network), '10.244.1.7');
  assert.equal(clusterAddressOf(vmi({}), network), '10.244.1.7', 'no binding named: bridge');
  // Masquerade: the cluster IP too, dialled from the node's namespace; the pod DNATs it to the guest.
  assert.equal(clusterAddressOf(vmi({ masquerade: {} }, { interfaces: [{ name: 'nic0', ipAddress: '10.233.0.1' }] }), network), '10.244.1.7');
  assert.equal(clusterAddressOf(vmi({ slirp: {} }), network), undefined, 'slirp stays on QEMU user networking');
});

function readAll(s: Duplex): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    s.on('data', (d: Buffer) => {
      text += d.toString();
    });
    s.on('close', () => resolve(text));
  });
}

test('dialGuest without a namespace: a stream both ways, a closed port a GuestRefused', async () => {
  const server = net.createServer((c) => c.once('data', (d) => c.end(`echo:${d}`)));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  try {
    const s = await dialGuest({ address: '127.0.0.1', port });
    s.write('hi');
    assert.equal(await readAll(s), 'echo:hi');
    await assert.rejects(dialGuest({ address: '127.0.0.1', port: await closedPort() }), (e: PortForwardError) => e.code === 502 && e.reason === 'GuestRefused');
  } finally {
    server.close();
  }
});

const NS = `vsl-pft-${process.pid}`;
const haveNetns = spawnSync('ip', ['netns', 'add', NS]).status === 0;
let listener: ReturnType<typeof spawn> | undefined;
const NS_PORT = 47_123;

before(async () => {
  if (!haveNetns) return;
  spawnSync('ip', ['-n', NS, 'link', 'set', 'lo', 'up']);
  // A listener on the namespace's own loopback: reachable only from inside it.
  listener = spawn(
    'ip',
    [
      'netns',
      'exec',
      NS,
      process.execPath,
      '-e',
      `require('node:net').createServer((c) => c.once('data', (d) => c.end('inside:' + d))).listen(${NS_PORT}, '127.0.0.1', () => console.log('up'))`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise((r) => listener!.stdout!.once('data', r));
});

after(() => {
  listener?.kill('SIGKILL');
  if (haveNetns) spawnSync('ip', ['netns', 'delete', NS]);
});

test(
  'dialGuest inside a network namespace reaches what only that namespace sees',
  { skip: !haveNetns && 'cannot create a network namespace here' },
  async () => {
    const s = await dialGuest({ address: '127.0.0.1', port: NS_PORT, netns: NS });
    s.write('ping');
    assert.equal(await readAll(s), 'inside:ping');
    await assert.rejects(
      dialGuest({ address: '127.0.0.1', port: NS_PORT + 1, netns: NS }),
      (e: PortForwardError) => e.code === 502 && e.reason === 'GuestRefused',
    );
    // The host's own loopback has no such listener: the namespace is what made it reachable.
    await assert.rejects(dialGuest({ address: '127.0.0.1', port: NS_PORT }), (e: PortForwardError) => e.reason === 'GuestRefused');
    await assert.rejects(dialGuest({ address: '127.0.0.1', port: NS_PORT, netns: 'no such/ns' }), TypeError);
  },
);

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as net.AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}
