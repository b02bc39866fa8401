/**
 * The builder context every configurator shares: the input, the spec objects, facts read once
 * (machine type, vCPUs), the causes and warnings collected so far, and the argv in sections.
 * Sections let a configurator run where its causes belong in the error (the order users and the
 * error goldens see) while its arguments land where QEMU's argv order puts them; e.g. the CPU
 * model is checked after the clock, but -cpu stands before -m.
 *
 * Also the small readers and QEMU option helpers the configurators share.
 */
import { Reason, supportedValues, isObject, type FieldCause } from '@vessel/api';
import type { ChardevNeed, QemuInput } from '../argv.ts';

export type Obj = Record<string, unknown>;
export const isObj: (v: unknown) => v is Obj = isObject;
export const isSet = (v: unknown): boolean => v !== undefined && v !== null;

function fmt(v: unknown): string {
  const s = typeof v === 'string' ? JSON.stringify(v) : (JSON.stringify(v) ?? String(v));
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

export class Causes {
  readonly list: FieldCause[] = [];
  private readonly seen = new Set<string>();
  add(reason: string, field: string, message: string): void {
    const key = `${field}\n${message}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.list.push({ reason, field, message });
  }
  /** A value outside what Vessel implements. */
  value(field: string, value: unknown, supported: readonly string[] | string): void {
    const tail = typeof supported === 'string' ? supported : `supported values: ${supported.map((s) => JSON.stringify(s)).join(', ')}`;
    this.add(Reason.NotSupported, field, `Unsupported value: ${fmt(value)}: ${tail}`);
  }
  invalid(field: string, value: unknown, detail: string): void {
    this.add(Reason.Invalid, field, `Invalid value: ${fmt(value)}: ${detail}`);
  }
  required(field: string, detail: string): void {
    this.add(Reason.Required, field, `Required value: ${detail}`);
  }
  duplicate(field: string, value: unknown, detail?: string): void {
    this.add(Reason.Duplicate, field, `Duplicate value: ${fmt(value)}${detail ? `: ${detail}` : ''}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Small readers: each returns undefined (and records a cause) when the value has the wrong type.

export function readObj(v: unknown, field: string, c: Causes): Obj | undefined {
  if (!isSet(v)) return undefined;
  if (isObj(v)) return v;
  c.invalid(field, v, 'must be an object');
  return undefined;
}
export function readList(v: unknown, field: string, c: Causes): unknown[] {
  if (!isSet(v)) return [];
  if (Array.isArray(v)) return v;
  c.invalid(field, v, 'must be a list');
  return [];
}
export function readStr(v: unknown, field: string, c: Causes): string | undefined {
  if (!isSet(v)) return undefined;
  if (typeof v === 'string') return v;
  c.invalid(field, v, 'must be a string');
  return undefined;
}
export function readBool(v: unknown, field: string, c: Causes): boolean | undefined {
  if (!isSet(v)) return undefined;
  if (typeof v === 'boolean') return v;
  c.invalid(field, v, 'must be a boolean');
  return undefined;
}
export function readInt(v: unknown, field: string, c: Causes, min: number, max: number): number | undefined {
  if (!isSet(v)) return undefined;
  if (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max) return v;
  c.invalid(field, v, `must be an integer from ${min} to ${max}`);
  return undefined;
}

/** Properties of one QEMU option; undefined ones are left out. */
export type OptProps = Array<[string, string | number | boolean | undefined]>;

/** One QEMU option string: head,key=value,... with commas in values doubled (QEMU's escape). */
export function opt(head: string, props: OptProps): string {
  const parts = [head];
  for (const [k, v] of props) {
    if (v === undefined) continue;
    const s = typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v);
    parts.push(`${k}=${s.replaceAll(',', ',,')}`);
  }
  return parts.join(',');
}

/** Host paths and names from the agent must not carry control characters (argv, golden files). */
export function checkHostString(what: string, s: string): string {
  if (s.length === 0 || /[\x00-\x1f\x7f]/.test(s)) throw new TypeError(`buildQemuArgv: ${what} ${JSON.stringify(s)} is empty or has control characters`);
  return s;
}

export const NAME_RE = /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/;

/**
 * Records a cause when a device name (already read) is missing or not a valid name; returns the
 * name when it can be used. `strict` names the start-and-end rule in the message.
 */
export function checkName(c: Causes, name: string | undefined, field: string, what: string, strict: boolean): string | undefined {
  if (name === undefined) {
    c.required(field, what);
    return undefined;
  }
  if (!NAME_RE.test(name)) {
    c.invalid(field, name, `must consist of letters, digits, ".", "_" or "-"${strict ? ' and start and end with a letter or digit' : ''}`);
    return undefined;
  }
  return name;
}

/**
 * Walks a list of named objects (spec.volumes, spec.networks): each must be an object with a
 * name not in `taken` (what the caller has recorded so far).
 */
export function forEachNamed(
  c: Causes,
  list: unknown,
  field: string,
  what: string,
  taken: ReadonlyMap<string, unknown>,
  visit: (o: Obj, name: string, path: string, index: number) => void,
): void {
  readList(list, field, c).forEach((v, j) => {
    const path = `${field}[${j}]`;
    const o = readObj(v, path, c);
    if (!o) return;
    const name = readStr(o.name, `${path}.name`, c);
    if (name === undefined) return c.required(`${path}.name`, what);
    if (taken.has(name)) return c.duplicate(`${path}.name`, name);
    visit(o, name, path, j);
  });
}

/**
 * Value lists shared with admission (VMI_SPEC_FIELDS); the configurators' own maps for models,
 * video types and error policies must cover theirs (support.test.ts builds every listed value).
 */
export const supportedStrings = (pattern: string): readonly string[] => supportedValues(pattern).map(String);

/** Where arguments land in the argv, in this order whichever configurator writes them. */
export const SECTIONS = ['head', 'machine', 'cpu', 'memory', 'firmware', 'clock', 'boot', 'display', 'actions', 'devices'] as const;
export type Section = (typeof SECTIONS)[number];

export interface Ctx {
  input: QemuInput;
  c: Causes;
  warnings: string[];
  /** Environment QEMU needs (TZ for clock.timezone). */
  env: Record<string, string>;
  chardevs: ChardevNeed[];
  spec: Obj;
  dom: Obj;
  devices: Obj;
  firmware: Obj;
  machine: string;
  q35: boolean;
  topology: { sockets: number; cores: number; threads: number };
  vcpus: number;
  transitional: boolean;
  /** ua-... device ids already used, with the field that took them. */
  ids: Map<string, string>;
  /** Boot order given anywhere (disks or interfaces): then only those devices boot. */
  explicitBoot: boolean;
  bootOrders: Map<number, string>;
  /** -machine properties, written once every configurator that adds some has run. */
  machineProps: OptProps;
  /** features.smm, for the firmware (secure boot needs SMM). */
  smm?: boolean;
  /** Guest memory is on hugepages, for the balloon (no free page reporting then). */
  hugepages: boolean;
  /** The serial console is attached, for sgabios (it prints there). */
  serialConsole: boolean;
  args: Record<Section, string[]>;
}

/** One area of the builder: reads its part of the spec, records causes and appends arguments. */
export type Configurator = (ctx: Ctx) => void;

export function claimId(ctx: Ctx, id: string, field: string, name: string): void {
  const prev = ctx.ids.get(id);
  if (prev) ctx.c.duplicate(field, name, `the device id ${id} is already used by ${prev}`);
  else ctx.ids.set(id, field);
}

export function readBootOrder(ctx: Ctx, v: unknown, field: string): number | undefined {
  const n = readInt(v, field, ctx.c, 1, 65535);
  if (n === undefined) return undefined;
  const prev = ctx.bootOrders.get(n);
  if (prev) ctx.c.duplicate(field, n, `boot order ${n} is already used by ${prev}`);
  else ctx.bootOrders.set(n, field.replace(/\.bootOrder$/, ''));
  return n;
}

export const virtio = (ctx: Ctx, model: string): string => (ctx.transitional ? `${model}-transitional` : model);
