/**
 * What a KubeVirt user tries first: every manifest of KubeVirt's own `examples/` (copied into
 * testdata/kubevirt-examples) through an unmodified kubectl. Each is either accepted by
 * `kubectl apply --dry-run=server` or refused with a message naming the field or the kind that
 * Vessel does not take; never an internal error, never a refusal that leaves the user guessing.
 * The ones issue 15 names (instancetypes, preferences, pools, replica sets, presets, priority
 * classes) must be accepted.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { KUBECTL_SKIP, kubectlFor, startVessel, type RunResult, type Vessel } from './harness.ts';

const DIR = join(import.meta.dirname, 'testdata', 'kubevirt-examples');

/**
 * Files every KubeVirt user of instancetypes, pools, presets and priorities applies.
 * vm-pool-cirros.yaml is written for pool.kubevirt.io/v1beta1 (KubeVirt 1.6), which Vessel
 * serves next to v1alpha1 (docs/api-versions.md).
 */
const MUST_ACCEPT = [
  'clarge.yaml',
  'csmall.yaml',
  'cluster-csmall.yaml',
  'windows.yaml',
  'virtio.yaml',
  'vm-pool-cirros.yaml',
  'vmi-replicaset-cirros.yaml',
  'vmi-preset-small.yaml',
  'preemtible.yaml',
  'non-preemtible.yaml',
];

/** A refusal the user can act on: a field path (`spec.x`, `.spec.x`, `spec.template...`) or the kind. */
const NAMES_FIELD_OR_KIND = /(^|[\s"'(\[.])(spec|metadata)(\.|\[)|no matches for kind|resource mapping not found/;

describe('KubeVirt examples/', { skip: KUBECTL_SKIP }, () => {
  let v: Vessel;
  const { kubectl } = kubectlFor(() => v);
  const results = new Map<string, RunResult>();

  before(async () => {
    v = await startVessel();
    for (const file of (await readdir(DIR)).filter((f) => f.endsWith('.yaml')).sort()) {
      results.set(file, await kubectl(['apply', '--dry-run=server', '-n', 'default', '-f', join(DIR, file)]));
    }
    const accepted = [...results].filter(([, r]) => r.code === 0).map(([f]) => f);
    console.log(`# ${accepted.length} of ${results.size} accepted; refused:`);
    for (const [f, r] of results) if (r.code !== 0) console.log(`#   ${f}: ${r.err.trim().split('\n')[0]}`);
  });
  after(async () => {
    await v?.close();
  });

  it('reads every example', () => {
    assert.ok(results.size >= 40, `only ${results.size} examples found in ${DIR}`);
  });

  it('accepts the instancetypes, preferences, pools, replica sets, presets and priority classes', () => {
    for (const f of MUST_ACCEPT) {
      const r = results.get(f);
      assert.ok(r, `${f} is missing from ${DIR}`);
      assert.equal(r.code, 0, `${f} was refused: ${r.err}`);
    }
  });

  it('refuses the rest naming the field or kind, never with an internal error', () => {
    for (const [f, r] of results) {
      if (r.code === 0) continue;
      assert.doesNotMatch(r.err, /InternalError|Internal error|500/, `${f}: ${r.err}`);
      assert.match(r.err, NAMES_FIELD_OR_KIND, `${f} was refused without naming a field or kind: ${r.err}`);
    }
  });

  it('changes nothing on a dry run', async () => {
    const r = await kubectl(['get', 'vm,vmi', '-A', '-o', 'name']);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out.trim(), '');
  });
});
