/**
 * The upstream OpenAPI component schemas (generated into ./upstream/*.json) and their compiled form:
 * a small tree of nodes the validator walks. Compiled once per schema name, lazily, so the server
 * pays for the kinds it actually sees; recursive types are handled by filling nodes in place.
 */
import { readFileSync } from 'node:fs';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type JsonObject = { [k: string]: Json };
export type JsonSchema = { [k: string]: Json };

export const QUANTITY = 'io.k8s.apimachinery.pkg.api.resource.Quantity';
export const INT_OR_STRING = 'io.k8s.apimachinery.pkg.util.intstr.IntOrString';
const REF_PREFIX = '#/components/schemas/';

/** Generated files, then hand-written ones (see their generatedBy): nmstate.json from kubernetes-nmstate's CRDs, multus.json from the NAD CRD, forklift.json from Forklift's CRDs, scheduling.json PriorityClass, instancetype.json from KubeVirt's instancetype types and apps/v1 ControllerRevision. */
export const UPSTREAM_FILES = ['kubernetes', 'kubevirt', 'cdi', 'nmstate', 'multus', 'forklift', 'scheduling', 'instancetype'] as const;

let all: Record<string, JsonSchema> | undefined;

/** All upstream component schemas by name (e.g. 'io.kubevirt.v1.VirtualMachine'). Read once. */
export function upstreamSchemas(): Readonly<Record<string, JsonSchema>> {
  if (!all) {
    const merged: Record<string, JsonSchema> = {};
    for (const f of UPSTREAM_FILES) {
      const doc = JSON.parse(readFileSync(new URL(`./upstream/${f}.json`, import.meta.url), 'utf8')) as { schemas: Record<string, JsonSchema> };
      Object.assign(merged, doc.schemas);
    }
    all = merged;
  }
  return all;
}

export interface ObjectNode {
  t: 'object';
  /** Declared properties (null-prototype object for fast, safe lookups). */
  props: Record<string, SchemaNode>;
  required: readonly string[];
  /** Schema of map values (`additionalProperties`), or null when the object is a struct. */
  additional: SchemaNode | null;
  /** x-kubernetes-preserve-unknown-fields: anything goes below. */
  preserve: boolean;
}
export interface ArrayNode {
  t: 'array';
  items: SchemaNode;
}
export interface StringNode {
  t: 'string';
  enum: ReadonlySet<string> | null;
  enumList: readonly string[] | null;
  format: string | null;
}
export type SchemaNode =
  ObjectNode | ArrayNode | StringNode | { t: 'integer' } | { t: 'number' } | { t: 'boolean' } | { t: 'quantity' } | { t: 'intOrString' } | { t: 'any' };

const ANY: SchemaNode = { t: 'any' };
const PRIMS: Record<string, SchemaNode> = {
  integer: { t: 'integer' },
  number: { t: 'number' },
  boolean: { t: 'boolean' },
  quantity: { t: 'quantity' },
  intOrString: { t: 'intOrString' },
};
const PLAIN_STRING: StringNode = { t: 'string', enum: null, enumList: null, format: null };

const compiled = new Map<string, SchemaNode>();

/** The compiled node of a named component schema. */
export function compiledSchema(name: string): SchemaNode {
  const hit = compiled.get(name);
  if (hit) return hit;
  if (name === QUANTITY) return PRIMS.quantity;
  if (name === INT_OR_STRING) return PRIMS.intOrString;
  const schema = upstreamSchemas()[name];
  if (!schema) throw new Error(`unknown schema ${name}`);
  if (schema.type === 'object' && !schema['x-kubernetes-preserve-unknown-fields']) {
    // Register before compiling properties: the type may refer to itself.
    const node: ObjectNode = { t: 'object', props: Object.create(null) as Record<string, SchemaNode>, required: [], additional: null, preserve: false };
    compiled.set(name, node);
    fillObject(node, schema);
    return node;
  }
  const node = compile(schema);
  compiled.set(name, node);
  return node;
}

function fillObject(node: ObjectNode, schema: JsonSchema): void {
  const props = (schema.properties ?? {}) as Record<string, JsonSchema>;
  for (const [k, v] of Object.entries(props)) node.props[k] = compile(v);
  node.required = Array.isArray(schema.required) ? (schema.required as string[]) : [];
  const ap = schema.additionalProperties;
  if (ap && typeof ap === 'object' && !Array.isArray(ap)) node.additional = compile(ap as JsonSchema);
  else if (ap === true) node.additional = ANY;
}

function compile(schema: JsonSchema): SchemaNode {
  const ref = typeof schema.$ref === 'string' ? schema.$ref : undefined;
  if (ref) return compiledSchema(ref.slice(REF_PREFIX.length));
  if (Array.isArray(schema.allOf) && schema.allOf.length === 1) return compile(schema.allOf[0] as JsonSchema);
  if (schema['x-kubernetes-preserve-unknown-fields']) {
    return schema.type === 'object'
      ? { t: 'object', props: Object.create(null) as Record<string, SchemaNode>, required: [], additional: null, preserve: true }
      : ANY;
  }
  switch (schema.type) {
    case 'string': {
      if (!Array.isArray(schema.enum) && !schema.format) return PLAIN_STRING;
      const list = Array.isArray(schema.enum) ? (schema.enum as string[]) : null;
      return { t: 'string', enum: list ? new Set(list) : null, enumList: list, format: typeof schema.format === 'string' ? schema.format : null };
    }
    case 'integer':
    case 'number':
    case 'boolean':
      return PRIMS[schema.type];
    case 'array':
      return { t: 'array', items: schema.items ? compile(schema.items as JsonSchema) : ANY };
    case 'object': {
      const node: ObjectNode = { t: 'object', props: Object.create(null) as Record<string, SchemaNode>, required: [], additional: null, preserve: false };
      fillObject(node, schema);
      return node;
    }
  }
  return ANY;
}
