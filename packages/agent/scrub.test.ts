/** scrubPaths: what tenants read names no pool or agent directory, and no other namespace. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { scrubPaths } from './scrub.ts';

const roots = { pools: ['/var/lib/vessel/pools/local', '/srv/shared'], other: ['/var/lib/vessel'] };
const uid = '0a1b2c3d-1111-4222-8333-444455556666';

test("a volume of the namespace's own claim is named by its claim", () => {
  const m = `qemu-img info failed (exit 1): Could not open '/var/lib/vessel/pools/local/t1/src-${uid}.qcow2': Image is not in qcow2 format`;
  assert.equal(scrubPaths(m, roots, 't1'), "qemu-img info failed (exit 1): Could not open 'volume src': Image is not in qcow2 format");
  assert.equal(scrubPaths(`/srv/shared/t1/disk-${uid}.qcow2@${uid}.qcow2: busy`, roots, 't1'), 'volume disk: busy');
});

test('another namespace\'s file is "the volume", without its namespace or claim', () => {
  const m = `Could not open backing file /var/lib/vessel/pools/local/t2/secret-${uid}.qcow2: denied`;
  const out = scrubPaths(m, roots, 't1');
  assert.equal(out, 'Could not open backing file the volume: denied');
  assert.ok(!out.includes('t2') && !out.includes('secret'));
});

test('run directories and other agent files are "a file of the node"; other text stays', () => {
  assert.equal(
    scrubPaths('QEMU in /var/lib/vessel/vms/t1/abc exited (see qemu.log there)', roots, 't1'),
    'QEMU in a file of the node exited (see qemu.log there)',
  );
  assert.equal(scrubPaths('backing file /etc/passwd refused', roots, 't1'), 'backing file /etc/passwd refused');
  assert.equal(scrubPaths('/var/lib/vesselx/f', roots, 't1'), '/var/lib/vesselx/f', 'a directory that only starts alike');
  assert.equal(scrubPaths('two: /srv/shared/t1/a and /srv/shared', roots, 't1'), 'two: the volume and the volume');
});
