/**
 * The Debian guest's #cloud-config subset parser (debian/rootfs/usr/local/sbin/vessel-cloud-config,
 * perl) on this machine's perl: `--dump` prints what it parsed and applies nothing.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const SCRIPT = fileURLToPath(new URL('./debian/rootfs/usr/local/sbin/vessel-cloud-config', import.meta.url));

function parse(yaml: string): unknown {
  const dir = mkdtempSync(path.join(tmpdir(), 'vessel-cc-'));
  try {
    writeFileSync(path.join(dir, 'user-data'), yaml);
    return JSON.parse(execFileSync('perl', [SCRIPT, '--dump', path.join(dir, 'user-data')], { encoding: 'utf8' }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('users, keys, write_files with | and b64, runcmd strings and lists', () => {
  const doc = parse(`#cloud-config
hostname: db1   # a comment
users:
  - default
  - name: alice
    shell: /bin/sh
    ssh_authorized_keys:
      - ssh-ed25519 AAAA alice@x
ssh_authorized_keys:
- "ssh-ed25519 BBBB root@y"
write_files:
  - path: /etc/a.txt
    permissions: '0600'
    content: |
      line one
        indented: two

      after a blank line
  - path: /etc/b
    encoding: b64
    content: aGVsbG8K
runcmd:
  - echo hi > /tmp/ran
  - [ sh, -c, "echo 'x y'" ]
  - 'it''s quoted'
`);
  assert.deepEqual(doc, {
    hostname: 'db1',
    users: ['default', { name: 'alice', shell: '/bin/sh', ssh_authorized_keys: ['ssh-ed25519 AAAA alice@x'] }],
    ssh_authorized_keys: ['ssh-ed25519 BBBB root@y'],
    write_files: [
      { path: '/etc/a.txt', permissions: '0600', content: 'line one\n  indented: two\n\nafter a blank line\n' },
      { path: '/etc/b', encoding: 'b64', content: 'aGVsbG8K' },
    ],
    runcmd: ['echo hi > /tmp/ran', ['sh', '-c', "echo 'x y'"], "it's quoted"],
  });
});

test('folded and stripped blocks, nested maps, empty values', () => {
  const doc = parse(`#cloud-config
a:
  b:
    c: "q\\"uoted\\n"
  d: >-
    one
    two
e:
f: plain: with colon
`);
  assert.deepEqual(doc, { a: { b: { c: 'q"uoted\n' }, d: 'one two' }, e: '', f: 'plain: with colon' });
});
