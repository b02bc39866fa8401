/**
 * Forklift's `pvcNameTemplate` (Plan.spec and spec.vms[]): Go's text/template language, the part
 * a name needs. Text; `{{.Var}}`; `{{if}}`/`{{else if}}`/`{{else}}`/`{{end}}`; pipelines
 * (`{{.VmName | lower}}`) and parenthesised calls; string, number and boolean literals; trim
 * markers (`{{-`, `-}}`). Functions: Go's builtins `eq ne lt le gt ge and or not len printf` and
 * the string ones `lower upper title trim`. `range`, `with`, variables (`$x`), `define` and
 * comments are refused with a reason: the plan reports it rather than guess.
 */

/** The variables of an OVA or vSphere disk, as Forklift names them. */
export interface PvcNameVars {
  VmName: string;
  PlanName: string;
  DiskIndex: number;
  RootDiskIndex: number;
  Shared: boolean;
  /** The disk's file name in the source, `.vmdk` suffix included (Forklift: VMware only); '' when the source has none. */
  FileName: string;
  /** The guest's lower-case drive letter of the disk (Forklift reads it from VMware Tools); '' when unknown. */
  WinDriveLetter: string;
}

/**
 * `.FileName` of a disk whose source file is `file`: its last path component, a vSphere
 * datastore path's (`[ds1] vm/vm_1.vmdk` → `vm_1.vmdk`) or an OVF href's.
 */
export function diskFileName(file: string): string {
  return (
    file
      .replace(/^\[[^\]]*\]\s*/, '')
      .split('/')
      .pop() ?? ''
  );
}

export type TemplateValue = string | number | boolean;
export type TemplateVars = Readonly<Record<string, TemplateValue>>;

export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TemplateError';
  }
}

type Arg = { field: string } | { lit: TemplateValue } | { sub: Pipe };
/** A command: a function and its arguments, or (fn undefined) a single value. */
interface Cmd {
  fn?: string;
  args: Arg[];
}
type Pipe = Cmd[];
type Node = { text: string } | { pipe: Pipe } | { branches: { cond: Pipe; body: Node[] }[]; otherwise: Node[] };

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** The rendered template; TemplateError for a syntax error, an unsupported action or function, or an unknown variable. */
export function renderTemplate(template: string, vars: TemplateVars | PvcNameVars): string {
  return run(parse(template), vars as TemplateVars);
}

/** The claim name for one disk, or why not: a TemplateError, or a result that is not a DNS-1123 label. */
export function pvcName(template: string, vars: PvcNameVars): string {
  const name = renderTemplate(template, vars);
  if (name.length > 63 || !DNS1123_LABEL.test(name)) throw new TemplateError(`"${name}" (disk ${vars.DiskIndex}) is not a valid DNS-1123 label`);
  return name;
}

// --- parsing ---------------------------------------------------------------------------------

/** Splits the template into text and actions, applying trim markers; then builds the tree. */
function parse(template: string): Node[] {
  const items: ({ text: string } | { action: string })[] = [];
  let rest = template;
  for (;;) {
    const open = rest.indexOf('{{');
    let text = open < 0 ? rest : rest.slice(0, open);
    if (text.includes('}}')) throw new TemplateError('unexpected "}}" outside an action');
    if (open < 0) {
      if (text) items.push({ text });
      break;
    }
    const close = rest.indexOf('}}', open + 2);
    if (close < 0) throw new TemplateError('unclosed action: "{{" without "}}"');
    let action = rest.slice(open + 2, close);
    if (/^-\s/.test(action)) {
      text = text.trimEnd();
      action = action.slice(1);
    }
    let trimAfter = false;
    if (/\s-$/.test(action)) {
      trimAfter = true;
      action = action.slice(0, -1);
    }
    if (text) items.push({ text });
    items.push({ action: action.trim() });
    rest = rest.slice(close + 2);
    if (trimAfter) rest = rest.trimStart();
  }
  let i = 0;
  /** Nodes up to an `else`/`end` (returned as the stopper) or the end of the template. */
  const block = (): { nodes: Node[]; stop?: string } => {
    const nodes: Node[] = [];
    while (i < items.length) {
      const it = items[i++]!;
      if ('text' in it) {
        nodes.push(it);
        continue;
      }
      const a = it.action;
      if (a === 'end' || a === 'else' || a.startsWith('else if ')) return { nodes, stop: a };
      const kw = /^([a-z]+)\b/.exec(a)?.[1];
      if (kw === 'if') nodes.push(ifNode(a.slice(2)));
      else if (a.startsWith('/*') || a.startsWith('$') || ['range', 'with', 'define', 'template', 'block', 'break', 'continue'].includes(kw ?? ''))
        throw new TemplateError(`unsupported action "{{${a}}}": a name template has text, {{.Var}}, {{if}} and functions`);
      else nodes.push({ pipe: pipeline(a) });
    }
    return { nodes };
  };
  const ifNode = (cond: string): Node => {
    const branches: { cond: Pipe; body: Node[] }[] = [];
    let c = cond;
    for (;;) {
      const { nodes, stop } = block();
      branches.push({ cond: pipeline(c), body: nodes });
      if (stop === undefined) throw new TemplateError('{{if}} without {{end}}');
      if (stop === 'end') return { branches, otherwise: [] };
      if (stop === 'else') {
        const tail = block();
        if (tail.stop !== 'end') throw new TemplateError(tail.stop ? `unexpected {{${tail.stop}}} after {{else}}` : '{{if}} without {{end}}');
        return { branches, otherwise: tail.nodes };
      }
      c = stop.slice('else if '.length);
    }
  };
  const { nodes, stop } = block();
  if (stop) throw new TemplateError(`unexpected {{${stop}}}`);
  return nodes;
}

const TOKEN = /\s*(?:("(?:[^"\\]|\\.)*")|`([^`]*)`|(-?\d+)\b|\.([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*)|([()|]))/y;

type Token = { str: string } | { num: number } | { field: string } | { ident: string } | { punct: string };

function tokens(src: string): Token[] {
  const out: Token[] = [];
  TOKEN.lastIndex = 0;
  while (TOKEN.lastIndex < src.length) {
    if (/^\s*$/.test(src.slice(TOKEN.lastIndex))) break;
    const at = TOKEN.lastIndex;
    const m = TOKEN.exec(src);
    if (!m) throw new TemplateError(`cannot read "${src.slice(at).trim()}" in "{{${src}}}"`);
    if (m[1] !== undefined) {
      try {
        out.push({ str: JSON.parse(m[1]) as string });
      } catch {
        throw new TemplateError(`bad string ${m[1]}`);
      }
    } else if (m[2] !== undefined) out.push({ str: m[2] });
    else if (m[3] !== undefined) out.push({ num: Number(m[3]) });
    else if (m[4] !== undefined) out.push({ field: m[4] });
    else if (m[5] !== undefined) out.push({ ident: m[5] });
    else out.push({ punct: m[6]! });
  }
  return out;
}

function pipeline(src: string): Pipe {
  const toks = tokens(src);
  let i = 0;
  const pipe = (): Pipe => {
    const cmds: Pipe = [];
    for (;;) {
      const args: Arg[] = [];
      let fn: string | undefined;
      while (i < toks.length) {
        const t = toks[i]!;
        if ('punct' in t && (t.punct === '|' || t.punct === ')')) break;
        i++;
        if ('punct' in t) {
          args.push({ sub: pipe() });
          const close = toks[i++];
          if (!close || !('punct' in close) || close.punct !== ')') throw new TemplateError(`unclosed "(" in "{{${src}}}"`);
        } else if ('ident' in t && t.ident !== 'true' && t.ident !== 'false') {
          if (fn !== undefined || args.length) throw new TemplateError(`"${t.ident}" is not a value in "{{${src}}}"`);
          if (!(t.ident in FUNCS)) throw new TemplateError(`function "${t.ident}" not defined: one of ${Object.keys(FUNCS).join(', ')}`);
          fn = t.ident;
        } else args.push('field' in t ? t : { lit: 'str' in t ? t.str : 'num' in t ? t.num : (t as { ident: string }).ident === 'true' });
      }
      if (fn === undefined && args.length !== 1) throw new TemplateError(args.length ? `too many values in "{{${src}}}"` : `empty command in "{{${src}}}"`);
      if (fn === undefined && cmds.length) throw new TemplateError(`a pipeline's later stage must be a function in "{{${src}}}"`);
      cmds.push({ fn, args });
      const t = toks[i];
      if (!t || !('punct' in t) || t.punct !== '|') return cmds;
      i++;
    }
  };
  const p = pipe();
  if (i < toks.length) throw new TemplateError(`unexpected ")" in "{{${src}}}"`);
  return p;
}

// --- evaluation ------------------------------------------------------------------------------

function run(nodes: Node[], vars: TemplateVars): string {
  let out = '';
  for (const n of nodes) {
    if ('text' in n) out += n.text;
    else if ('pipe' in n) out += String(evalPipe(n.pipe, vars));
    else {
      const hit = n.branches.find((b) => truthy(evalPipe(b.cond, vars)));
      out += run(hit ? hit.body : n.otherwise, vars);
    }
  }
  return out;
}

function evalPipe(pipe: Pipe, vars: TemplateVars): TemplateValue {
  let prev: TemplateValue | undefined;
  for (const cmd of pipe) {
    const args = cmd.args.map((a) => evalArg(a, vars));
    if (prev !== undefined) args.push(prev);
    prev = cmd.fn === undefined ? args[0]! : FUNCS[cmd.fn]!(args);
  }
  return prev!;
}

function evalArg(a: Arg, vars: TemplateVars): TemplateValue {
  if ('lit' in a) return a.lit;
  if ('sub' in a) return evalPipe(a.sub, vars);
  if (!Object.hasOwn(vars, a.field)) throw new TemplateError(`unknown variable .${a.field}: one of .${Object.keys(vars).join(', .')}`);
  return vars[a.field]!;
}

/** Go's truth: false, 0 and "" are false. */
const truthy = (v: TemplateValue): boolean => v !== false && v !== 0 && v !== '';

function fail(message: string): never {
  throw new TemplateError(message);
}

function arity(name: string, args: TemplateValue[], n: number): void {
  if (args.length !== n) throw new TemplateError(`${name} takes ${n} argument${n === 1 ? '' : 's'}, got ${args.length}`);
}

function str(name: string, v: TemplateValue): string {
  if (typeof v !== 'string') throw new TemplateError(`${name} takes a string, got ${JSON.stringify(v)}`);
  return v;
}

function compare(name: string, a: TemplateValue, b: TemplateValue): number {
  if (typeof a !== typeof b || typeof a === 'boolean') {
    if (name === 'eq' || name === 'ne') {
      if (typeof a !== typeof b) throw new TemplateError(`${name}: incompatible types for comparison (${JSON.stringify(a)}, ${JSON.stringify(b)})`);
      return a === b ? 0 : 1;
    }
    throw new TemplateError(`${name}: cannot order ${JSON.stringify(a)} and ${JSON.stringify(b)}`);
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

const FUNCS: Record<string, (args: TemplateValue[]) => TemplateValue> = {
  // Go's eq is true when the first argument equals any of the others.
  eq: (a) => {
    if (a.length < 2) throw new TemplateError('eq takes at least 2 arguments');
    return a.slice(1).some((b) => compare('eq', a[0]!, b) === 0);
  },
  ne: (a) => (arity('ne', a, 2), compare('ne', a[0]!, a[1]!) !== 0),
  lt: (a) => (arity('lt', a, 2), compare('lt', a[0]!, a[1]!) < 0),
  le: (a) => (arity('le', a, 2), compare('le', a[0]!, a[1]!) <= 0),
  gt: (a) => (arity('gt', a, 2), compare('gt', a[0]!, a[1]!) > 0),
  ge: (a) => (arity('ge', a, 2), compare('ge', a[0]!, a[1]!) >= 0),
  // Go's and/or return the deciding argument, not a boolean.
  and: (a) => (a.length ? (a.find((v) => !truthy(v)) ?? a[a.length - 1]!) : fail('and takes at least 1 argument')),
  or: (a) => (a.length ? (a.find(truthy) ?? a[a.length - 1]!) : fail('or takes at least 1 argument')),
  not: (a) => (arity('not', a, 1), !truthy(a[0]!)),
  len: (a) => (arity('len', a, 1), [...str('len', a[0]!)].length),
  printf: (a) => sprintf(str('printf', a[0] ?? ''), a.slice(1)),
  lower: (a) => (arity('lower', a, 1), str('lower', a[0]!).toLowerCase()),
  upper: (a) => (arity('upper', a, 1), str('upper', a[0]!).toUpperCase()),
  title: (a) => (arity('title', a, 1), str('title', a[0]!).replace(/(^|[^\p{L}\p{N}])(\p{L})/gu, (_m, p: string, c: string) => p + c.toUpperCase())),
  trim: (a) => (arity('trim', a, 1), str('trim', a[0]!).trim()),
};

/** Go's fmt verbs a name needs: %s %d %v %t %q %%, with flags `-` and `0`, width and precision. */
function sprintf(format: string, args: TemplateValue[]): string {
  let n = 0;
  const out = format.replace(/%([-0]?)(\d+)?(?:\.(\d+))?([sdvtq%])/g, (_m, flag: string, width: string | undefined, prec: string | undefined, verb: string) => {
    if (verb === '%') return '%';
    if (n >= args.length) return `%!${verb}(MISSING)`;
    const v = args[n++]!;
    let s = verb === 'q' ? JSON.stringify(String(v)) : verb === 'd' && typeof v !== 'number' ? `%!d(${typeof v}=${v})` : String(v);
    if (prec !== undefined && (verb === 's' || verb === 'v')) s = [...s].slice(0, Number(prec)).join('');
    const w = Number(width ?? 0);
    if (s.length < w) s = flag === '-' ? s.padEnd(w) : flag === '0' && verb === 'd' ? s.padStart(w, '0') : s.padStart(w);
    return s;
  });
  return n < args.length ? `${out}%!(EXTRA ${args.slice(n).join(', ')})` : out;
}
