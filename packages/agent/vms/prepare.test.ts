/**
 * claimVolumePath with the agent's real check (Pool.containedPath): a claim's recorded
 * vessel.io/volume-path is only used inside its own namespace's directory. Decoy files only.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { KubeObject } from '@vessel/client';
import { containedPath, Pool } from '../storage/pools.ts';
import { NetworkError } from '../network/errors.ts';
import { claimVolumePath, PrepareError, prepareVm } from './prepare.ts';

let root: string;
let pool: Pool;
const locate = (ns: string, path: string) => containedPath([pool], ns, path, 'vessel.io/volume-path').path;

const claim = (path: string): KubeObject => ({
  apiVersion: 'v1',
  kind: 'PersistentVolumeClaim',
  metadata: { name: 'disk', namespace: 't1', annotations: { 'vessel.io/volume-path': path } },
  status: { phase: 'Bound' },
});

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vessel-prepare-'));
  pool = new Pool('local', join(root, 'local'), false);
  await pool.ensureNamespaceDir('t1');
  await pool.ensureNamespaceDir('t2');
  await writeFile(join(pool.dir, 't1', 'disk.qcow2'), 'decoy');
  await writeFile(join(pool.dir, 't2', 'other.qcow2'), 'decoy');
  await symlink(join(pool.dir, 't2', 'other.qcow2'), join(pool.dir, 't1', 'link.qcow2'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

test("the claim's own file is used", () => {
  assert.equal(claimVolumePath('t1', 'disk', 'root', claim(join(pool.dir, 't1', 'disk.qcow2')), locate), join(pool.dir, 't1', 'disk.qcow2'));
});

test('a volume-path into another namespace (.. or a symlink) fails the VMI with VolumeError', () => {
  for (const path of [`${pool.dir}/t1/../t2/other.qcow2`, join(pool.dir, 't1', 'link.qcow2')]) {
    assert.throws(
      () => claimVolumePath('t1', 'disk', 'root', claim(path), locate),
      (e: unknown) => e instanceof PrepareError && e.reason === 'VolumeError' && !e.retry && /namespace t1/.test(e.message),
      path,
    );
  }
});

test("a file in no pool of this node is another node's volume", () => {
  assert.throws(
    () => claimVolumePath('t1', 'disk', 'root', claim(join(root, 'elsewhere.qcow2')), locate),
    (e: unknown) => e instanceof PrepareError && e.reason === 'VolumeNotOnNode',
  );
});

/** A VMI with the pod network (masquerade) and a multus NIC `lan` on NAD `v100`. */
const multusVmi = () => ({
  metadata: { name: 'vm', namespace: 't1' },
  spec: {
    domain: {
      devices: {
        interfaces: [
          { name: 'default', masquerade: {} },
          { name: 'lan', bridge: {} },
        ],
      },
    },
    networks: [
      { name: 'default', pod: {} },
      { name: 'lan', multus: { networkName: 'v100' } },
    ],
  },
});

test('a multus NIC with the bridge binding is a tap on its NAD; a missing NAD keeps the VMI waiting with NetworkNotFound', async () => {
  const calls: string[] = [];
  const ctx = (fail?: NetworkError) => ({
    client: {} as never,
    claim: () => undefined,
    locate,
    secondary: {
      attach: async (vmi: { namespace: string; name: string }, iface: string, networkName: string) => {
        calls.push(`${vmi.namespace}/${vmi.name}/${iface}:${networkName}`);
        if (fail) throw fail;
        return { iface, tap: 'vsn0123456789a', addresses: [] };
      },
    },
  });
  const runDir = join(root, 'run-vm');
  const prepared = await prepareVm(multusVmi() as never, runDir, ctx());
  assert.deepEqual(prepared.networks, { default: { kind: 'user', mac: undefined }, lan: { kind: 'tap', ifname: 'vsn0123456789a', mac: undefined } });
  assert.deepEqual(calls, ['t1/vm/lan:v100']);
  for (const [code, reason, retry] of [
    ['NetworkNotFound', 'NetworkNotFound', true],
    ['NetworkInvalid', 'NetworkInvalid', true],
    ['CommandFailed', 'NetworkError', true],
    ['Unsupported', 'NetworkError', false],
  ] as const) {
    await assert.rejects(
      prepareVm(multusVmi() as never, runDir, ctx(new NetworkError(code, `network lan: ${code}`))),
      (e: unknown) => e instanceof PrepareError && e.reason === reason && e.retry === retry && /network lan/.test(e.message),
      code,
    );
  }
});
