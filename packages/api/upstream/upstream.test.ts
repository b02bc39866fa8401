/**
 * Golden test: the committed upstream schemas are exactly what scripts/gen-upstream-schemas.ts
 * produces from the pinned @kubevirt-ui-ext/kubevirt-api, so regenerating is the only way they
 * change. On failure run: node --import tsx scripts/gen-upstream-schemas.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { generateUpstreamSchemas } from '../../../scripts/gen-upstream-schemas.ts';

test('committed upstream/*.json equal a fresh regeneration', () => {
  const files = generateUpstreamSchemas();
  assert.deepEqual(Object.keys(files).sort(), ['cdi.json', 'kubernetes.json', 'kubevirt.json']);
  for (const [name, text] of Object.entries(files)) {
    const committed = readFileSync(new URL(`./${name}`, import.meta.url), 'utf8');
    assert.ok(
      committed === text,
      `packages/api/upstream/${name} differs from the generator's output; regenerate with: node --import tsx scripts/gen-upstream-schemas.ts`,
    );
  }
});

test('wire names come from the generated FromJSON mapping, not the TS property names', () => {
  const kubevirt = JSON.parse(generateUpstreamSchemas()['kubevirt.json']) as { schemas: Record<string, { properties?: Record<string, unknown> }> };
  const status = kubevirt.schemas['io.kubevirt.v1.VirtualMachineInstanceStatus'].properties ?? {};
  assert.ok('VSOCKCID' in status, 'VSOCKCID (TS: vSOCKCID)');
  assert.ok(!('vSOCKCID' in status));
});
