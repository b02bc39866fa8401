/**
 * /openapi/v2 in protobuf (gnostic's openapi_v2.Document), the only form client-go's
 * discovery asks for (`Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`).
 * kubectl reads it when a kind is not in OpenAPI v3: `kubectl apply` of a kind Vessel does not
 * serve validates against it, and only with an answer it can parse does it go on to say
 * `no matches for kind`. The document is the JSON one (openApiV2), field for field; vendor
 * extensions, defaults, enums and examples travel as YAML text, as gnostic's `Any.yaml`
 * (JSON is YAML). Field numbers are those of gnostic's OpenAPIv2.proto.
 */
import { isObject } from '@vessel/api';

/** What client-go asks for; kube-openapi also accepts the second spelling, and answers with it (Go's mime parser refuses the "@"). */
export const OPENAPI_V2_PROTOBUF_TYPES = [
  'application/com.github.proto-openapi.spec.v2@v1.0+protobuf',
  'application/com.github.proto-openapi.spec.v2.v1.0+protobuf',
];
export const OPENAPI_V2_PROTOBUF_REPLY = OPENAPI_V2_PROTOBUF_TYPES[1];

type Json = unknown;
type Obj = Record<string, Json>;

const isObj = isObject;

/** Appends protobuf wire format: varints, doubles and length-delimited fields. */
class Writer {
  private readonly parts: Buffer[] = [];

  private varint(n: number): void {
    const bytes: number[] = [];
    let v = BigInt.asUintN(64, BigInt(Math.trunc(n)));
    do {
      let b = Number(v & 0x7fn);
      v >>= 7n;
      if (v) b |= 0x80;
      bytes.push(b);
    } while (v);
    this.parts.push(Buffer.from(bytes));
  }

  private key(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  bytes(field: number, data: Buffer): void {
    this.key(field, 2);
    this.varint(data.length);
    this.parts.push(data);
  }
  string(field: number, v: Json): void {
    if (typeof v === 'string') this.bytes(field, Buffer.from(v, 'utf8'));
  }
  strings(field: number, v: Json): void {
    if (Array.isArray(v)) for (const s of v) this.string(field, s);
  }
  bool(field: number, v: Json): void {
    if (v === true) {
      this.key(field, 0);
      this.varint(1);
    }
  }
  /** A bool in a oneof: present even when false. */
  oneofBool(field: number, v: boolean): void {
    this.key(field, 0);
    this.varint(v ? 1 : 0);
  }
  int(field: number, v: Json): void {
    if (typeof v === 'number' && Number.isInteger(v)) {
      this.key(field, 0);
      this.varint(v);
    }
  }
  double(field: number, v: Json): void {
    if (typeof v !== 'number') return;
    const b = Buffer.alloc(8);
    b.writeDoubleLE(v);
    this.key(field, 1);
    this.parts.push(b);
  }
  message(field: number, build: (w: Writer) => void): void {
    const w = new Writer();
    build(w);
    this.bytes(field, w.finish());
  }
  finish(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** gnostic Any: the value as YAML text (field 2). */
function any(w: Writer, field: number, v: Json): void {
  if (v === undefined) return;
  w.message(field, (a) => a.string(2, JSON.stringify(v)));
}

/** Repeated NamedAny for the object's `x-` keys. */
function extensions(w: Writer, field: number, o: Obj): void {
  for (const [k, v] of Object.entries(o)) {
    if (k.startsWith('x-'))
      w.message(field, (n) => {
        n.string(1, k);
        any(n, 2, v);
      });
  }
}

function info(w: Writer, o: Obj): void {
  w.string(1, o.title);
  w.string(2, o.version);
  w.string(3, o.description);
  extensions(w, 7, o);
}

function schema(w: Writer, s: Obj): void {
  w.string(1, s.$ref);
  w.string(2, s.format);
  w.string(3, s.title);
  w.string(4, s.description);
  any(w, 5, s.default);
  w.double(6, s.multipleOf);
  w.double(7, s.maximum);
  w.bool(8, s.exclusiveMaximum);
  w.double(9, s.minimum);
  w.bool(10, s.exclusiveMinimum);
  w.int(11, s.maxLength);
  w.int(12, s.minLength);
  w.string(13, s.pattern);
  w.int(14, s.maxItems);
  w.int(15, s.minItems);
  w.bool(16, s.uniqueItems);
  w.int(17, s.maxProperties);
  w.int(18, s.minProperties);
  w.strings(19, s.required);
  if (Array.isArray(s.enum)) for (const e of s.enum) any(w, 20, e);
  const ap = s.additionalProperties;
  if (isObj(ap)) w.message(21, (a) => a.message(1, (x) => schema(x, ap)));
  else if (typeof ap === 'boolean') w.message(21, (a) => a.oneofBool(2, ap));
  if (typeof s.type === 'string' || Array.isArray(s.type)) {
    const types = Array.isArray(s.type) ? s.type : [s.type];
    w.message(22, (t) => t.strings(1, types));
  }
  const items = s.items;
  if (isObj(items) || Array.isArray(items)) {
    w.message(23, (it) => {
      for (const i of Array.isArray(items) ? items : [items]) if (isObj(i)) it.message(1, (x) => schema(x, i));
    });
  }
  if (Array.isArray(s.allOf)) for (const a of s.allOf) if (isObj(a)) w.message(24, (x) => schema(x, a));
  const props = s.properties;
  if (isObj(props)) {
    w.message(25, (p) => {
      for (const [name, v] of Object.entries(props))
        if (isObj(v))
          p.message(1, (n) => {
            n.string(1, name);
            n.message(2, (x) => schema(x, v));
          });
    });
  }
  w.string(26, s.discriminator);
  w.bool(27, s.readOnly);
  any(w, 30, s.example);
  extensions(w, 31, s);
}

/** Primitive item schemas of non-body parameters (PrimitivesItems). */
function primitives(w: Writer, p: Obj): void {
  w.string(1, p.type);
  w.string(2, p.format);
  if (isObj(p.items)) {
    const items = p.items;
    w.message(3, (x) => primitives(x, items));
  }
  w.string(4, p.collectionFormat);
  any(w, 5, p.default);
  extensions(w, 18, p);
}

/**
 * Query, path and header parameters differ in numbering: query has allow_empty_value (5) and
 * so everything after it moves one up.
 */
function nonBody(w: Writer, p: Obj): void {
  const query = p.in === 'query' || p.in === 'formData';
  const sub = p.in === 'header' ? 1 : p.in === 'formData' ? 2 : p.in === 'query' ? 3 : 4;
  w.message(sub, (x) => {
    x.bool(1, p.required);
    x.string(2, p.in);
    x.string(3, p.description);
    x.string(4, p.name);
    const o = query ? 1 : 0;
    if (query) x.bool(5, p.allowEmptyValue);
    x.string(5 + o, p.type);
    x.string(6 + o, p.format);
    if (isObj(p.items)) {
      const items = p.items;
      x.message(7 + o, (i) => primitives(i, items));
    }
    x.string(8 + o, p.collectionFormat);
    any(x, 9 + o, p.default);
    x.bool(19 + o, p.uniqueItems);
    extensions(x, 22 + o, p);
  });
}

/** ParametersItem: a Parameter (body or non-body) or a JSON reference. */
function parameter(w: Writer, p: Obj): void {
  if (typeof p.$ref === 'string') {
    w.message(2, (r) => r.string(1, p.$ref));
    return;
  }
  w.message(1, (param) => {
    if (p.in === 'body') {
      param.message(1, (b) => {
        b.string(1, p.description);
        b.string(2, p.name);
        b.string(3, p.in);
        b.bool(4, p.required);
        if (isObj(p.schema)) {
          const s = p.schema;
          b.message(5, (x) => schema(x, s));
        }
        extensions(b, 6, p);
      });
    } else {
      param.message(2, (nb) => nonBody(nb, p));
    }
  });
}

function operation(w: Writer, o: Obj): void {
  w.strings(1, o.tags);
  w.string(2, o.summary);
  w.string(3, o.description);
  w.string(5, o.operationId);
  w.strings(6, o.produces);
  w.strings(7, o.consumes);
  if (Array.isArray(o.parameters)) for (const p of o.parameters) if (isObj(p)) w.message(8, (x) => parameter(x, p));
  const responses = o.responses;
  if (isObj(responses)) {
    w.message(9, (rs) => {
      for (const [code, r] of Object.entries(responses)) {
        if (!isObj(r)) continue;
        rs.message(1, (named) => {
          named.string(1, code);
          named.message(2, (value) =>
            value.message(1, (resp) => {
              resp.string(1, r.description ?? '');
              if (isObj(r.schema)) {
                const s = r.schema;
                resp.message(2, (item) => item.message(1, (x) => schema(x, s)));
              }
              extensions(resp, 5, r);
            }),
          );
        });
      }
    });
  }
  w.strings(10, o.schemes);
  w.bool(11, o.deprecated);
  extensions(w, 13, o);
}

const METHODS: Record<string, number> = { get: 2, put: 3, post: 4, delete: 5, options: 6, head: 7, patch: 8 };

function pathItem(w: Writer, item: Obj): void {
  w.string(1, item.$ref);
  for (const [m, field] of Object.entries(METHODS)) {
    const op = item[m];
    if (isObj(op)) w.message(field, (x) => operation(x, op));
  }
  if (Array.isArray(item.parameters)) for (const p of item.parameters) if (isObj(p)) w.message(9, (x) => parameter(x, p));
  extensions(w, 10, item);
}

/** Encodes a Swagger 2.0 document (as JSON) as gnostic's openapi_v2.Document. */
export function encodeOpenApiV2(doc: Obj): Buffer {
  const w = new Writer();
  w.string(1, doc.swagger);
  if (isObj(doc.info)) {
    const i = doc.info;
    w.message(2, (x) => info(x, i));
  }
  w.string(3, doc.host);
  w.string(4, doc.basePath);
  w.strings(5, doc.schemes);
  w.strings(6, doc.consumes);
  w.strings(7, doc.produces);
  const paths = doc.paths;
  if (isObj(paths)) {
    w.message(8, (ps) => {
      extensions(ps, 1, paths);
      for (const [p, item] of Object.entries(paths)) {
        if (!p.startsWith('x-') && isObj(item))
          ps.message(2, (named) => {
            named.string(1, p);
            named.message(2, (x) => pathItem(x, item));
          });
      }
    });
  }
  const definitions = doc.definitions;
  if (isObj(definitions)) {
    w.message(9, (ds) => {
      for (const [n, s] of Object.entries(definitions))
        if (isObj(s))
          ds.message(1, (named) => {
            named.string(1, n);
            named.message(2, (x) => schema(x, s));
          });
    });
  }
  extensions(w, 16, doc);
  return w.finish();
}
