/**
 * One-off generator of packages/api/upstream/forklift.json from Forklift's CRDs (kubev2v/forklift,
 * operator/config/crd/bases/forklift.konveyor.io_<plural>.yaml): each openAPIV3Schema with its
 * descriptions dropped (the file stays small) and `metadata` pointing at ObjectMeta, as the other
 * upstream files do. Vessel adds `status.inventory` (counts) to Provider. Not run by CI: the CRDs
 * are not in the tree. Usage: node --import tsx scripts/gen-forklift-schemas.ts CRD_DIR
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';

type J = null | boolean | number | string | J[] | { [k: string]: J };

const KINDS = { providers: 'Provider', networkmaps: 'NetworkMap', storagemaps: 'StorageMap', plans: 'Plan', migrations: 'Migration', hooks: 'Hook' };

function strip(v: J): J {
  if (Array.isArray(v)) return v.map(strip);
  if (v && typeof v === 'object') {
    const out: Record<string, J> = {};
    for (const [k, x] of Object.entries(v)) if (k !== 'description') out[k] = strip(x);
    return out;
  }
  return v;
}

const dir = process.argv[2];
if (!dir) throw new Error('usage: gen-forklift-schemas.ts CRD_DIR');
const schemas: Record<string, J> = {};
for (const [plural, kind] of Object.entries(KINDS)) {
  const crd = parse(readFileSync(join(dir, `forklift.konveyor.io_${plural}.yaml`), 'utf8')) as {
    spec: { versions: { name: string; schema: { openAPIV3Schema: J } }[] };
  };
  const version = crd.spec.versions.find((v) => v.name === 'v1beta1');
  if (!version) throw new Error(`${plural}: no v1beta1`);
  const s = strip(version.schema.openAPIV3Schema) as Record<string, J> & { properties: Record<string, J> };
  s.properties.metadata = { allOf: [{ $ref: '#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta' }] };
  if (kind === 'Provider') {
    const status = s.properties.status as { properties: Record<string, J> };
    const count = { type: 'integer', format: 'int64' };
    status.properties.inventory = {
      type: 'object',
      description: 'Vessel: how many of each the inventory holds.',
      properties: { vms: count, networks: count, datastores: count, hosts: count },
    };
  }
  schemas[`io.konveyor.forklift.v1beta1.${kind}`] = s;
  schemas[`io.konveyor.forklift.v1beta1.${kind}List`] = {
    type: 'object',
    required: ['items'],
    properties: {
      apiVersion: { type: 'string' },
      kind: { type: 'string' },
      metadata: { allOf: [{ $ref: '#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta' }] },
      items: { type: 'array', items: { $ref: `#/components/schemas/io.konveyor.forklift.v1beta1.${kind}` } },
    },
  };
}
const out = {
  generatedBy: 'scripts/gen-forklift-schemas.ts from the CRDs of github.com/kubev2v/forklift (operator/config/crd/bases), descriptions dropped',
  schemas,
};
writeFileSync(new URL('../packages/api/upstream/forklift.json', import.meta.url), JSON.stringify(out) + '\n');
