/**
 * What `vessel ssh`, `vessel scp` and `vessel port-forward` make of their arguments: the
 * OpenSSH argv (ProxyCommand = `vessel port-forward --stdio ...`, quoted for the shell ssh runs
 * it with) and the port specs. That the ProxyCommand carries a real session is the e2e test's.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { UsageError } from '../errors.ts';
import { parsePortSpec, parseTarget } from './port-forward.ts';
import { parseDestination, proxyCommand, scpArgv, sshArgv, type ProxyOptions } from './ssh.ts';

const o: ProxyOptions = {
  self: ['/usr/bin/node', '--import', '/opt/ves sel/tsx.mjs', '/opt/vessel/main.ts'],
  namespace: 'team-a',
  kubeconfig: "/home/o'neil/kc",
};

test('port specs read as kubectl reads them; udp is refused up front', () => {
  assert.deepEqual(parsePortSpec('8080'), { local: 8080, remote: 8080 });
  assert.deepEqual(parsePortSpec('2222:22'), { local: 2222, remote: 22 });
  assert.deepEqual(parsePortSpec(':80'), { local: 0, remote: 80 });
  assert.deepEqual(parsePortSpec('0:80/tcp'), { local: 0, remote: 80 });
  assert.throws(
    () => parsePortSpec('53/udp'),
    (e: Error) => e instanceof UsageError && /udp port-forward is not supported: only tcp/.test(e.message),
  );
  for (const bad of ['0', '70000', 'http', '1:2:3', '80:']) assert.throws(() => parsePortSpec(bad), UsageError, bad);
  assert.deepEqual(parseTarget('vm/web'), { resource: 'virtualmachines', name: 'web' });
  assert.deepEqual(parseTarget('vmi/web'), { resource: 'virtualmachineinstances', name: 'web' });
  assert.throws(() => parseTarget('pod/web'), UsageError);
  assert.throws(() => parseTarget('web'), UsageError);
});

test('vessel ssh runs ssh with port-forward --stdio as its ProxyCommand', () => {
  const argv = sshArgv(o, parseDestination('root@vm/web'), {
    identityFile: '/k/id',
    port: '2222',
    command: 'uname -a',
    localSshOpts: ['-oStrictHostKeyChecking=no'],
  });
  assert.deepEqual(argv, [
    '-o',
    "ProxyCommand=/usr/bin/node --import '/opt/ves sel/tsx.mjs' /opt/vessel/main.ts --kubeconfig '/home/o'\\''neil/kc' -n team-a port-forward --stdio vm/web 2222",
    '-i',
    '/k/id',
    '-oStrictHostKeyChecking=no',
    'root@vm.web.team-a',
    '--',
    'uname -a',
  ]);
  // The shell ssh hands the ProxyCommand to must get back exactly our words.
  const words = spawnSync('sh', ['-c', `printf '%s\\n' ${argv[1].slice('ProxyCommand='.length)}`], { encoding: 'utf8' })
    .stdout.trimEnd()
    .split('\n');
  assert.deepEqual(words, [...o.self, '--kubeconfig', "/home/o'neil/kc", '-n', 'team-a', 'port-forward', '--stdio', 'vm/web', '2222']);
  // -l wins over user@, no user at all leaves ssh's default; a VMI gets its own alias.
  assert.equal(sshArgv(o, parseDestination('root@vmi/db'), { username: 'admin', port: '22', localSshOpts: [] }).at(-1), 'admin@vmi.db.team-a');
  assert.equal(sshArgv(o, parseDestination('vm/web'), { port: '22', localSshOpts: [] }).at(-1), 'vm.web.team-a');
  assert.throws(() => sshArgv(o, parseDestination('vm/web'), { port: 'x', localSshOpts: [] }), UsageError);
});

test('ssh expands % in a ProxyCommand: a literal one is doubled', () => {
  assert.match(proxyCommand({ ...o, kubeconfig: '/tmp/100%/kc' }, { resource: 'virtualmachines', name: 'web' }, 22), /'?\/tmp\/100%%\/kc'? /);
});

test('vessel scp rewrites the one remote side and uses the classic scp protocol', () => {
  const up = scpArgv(o, './a.txt', 'root@vm/web:/tmp/a.txt', { port: '22', localSshOpts: [], recursive: true });
  assert.equal(up[0], '-O');
  assert.match(up[2], /^ProxyCommand=.* port-forward --stdio vm\/web 22$/);
  assert.deepEqual(up.slice(3), ['-r', './a.txt', 'root@vm.web.team-a:/tmp/a.txt']);
  const down = scpArgv(o, 'vmi/web:/etc/hostname', '.', { port: '22', localSshOpts: [], username: 'root' });
  assert.deepEqual(down.slice(-2), ['root@vmi.web.team-a:/etc/hostname', '.']);
  assert.throws(() => scpArgv(o, 'a', 'b', { port: '22', localSshOpts: [] }), UsageError);
  assert.throws(() => scpArgv(o, 'vm/a:/x', 'vm/b:/y', { port: '22', localSshOpts: [] }), UsageError);
});
