/**
 * Label and field selectors, in the syntax kubectl sends (`app=web,tier!=db`, `env in (a,b)`,
 * `!legacy`; fields: `metadata.name=x,status.phase!=Running`). Parse errors are 400s that
 * quote the bad part.
 */
import { badRequest } from './errors.ts';

type Op = '=' | '!=' | 'in' | 'notin' | 'exists' | '!exists';
interface Requirement {
  key: string;
  op: Op;
  values: string[];
}

export type Matcher = (obj: Record<string, unknown>) => boolean;

const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$/;

/** Splits on commas that are not inside parentheses. */
function splitTerms(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out.map((t) => t.trim()).filter((t) => t !== '');
}

function parseLabelTerm(term: string): Requirement {
  const setMatch = /^(\S+)\s+(in|notin)\s*\(([^()]*)\)$/.exec(term);
  let req: Requirement;
  if (setMatch) {
    const values = setMatch[3]
      .split(',')
      .map((v) => v.trim())
      .filter((v) => v !== '');
    if (values.length === 0) throw badRequest(`unable to parse requirement: "${term}": the set needs at least one value`);
    req = { key: setMatch[1], op: setMatch[2] as Op, values };
  } else if (term.startsWith('!')) {
    req = { key: term.slice(1).trim(), op: '!exists', values: [] };
  } else {
    const m = /^([^=!\s]+)\s*(==|=|!=)\s*(.*)$/.exec(term);
    if (m) req = { key: m[1], op: m[2] === '!=' ? '!=' : '=', values: [m[3].trim()] };
    else if (/^[^=!\s()]+$/.test(term)) req = { key: term, op: 'exists', values: [] };
    else throw badRequest(`unable to parse requirement: "${term}": expected key, !key, key=value, key!=value, key in (a,b) or key notin (a,b)`);
  }
  if (!LABEL_KEY.test(req.key) || req.key.length > 317) {
    throw badRequest(
      `unable to parse requirement: "${term}": invalid label key "${req.key}": a qualified name must consist of alphanumeric characters, '-', '_' or '.', optionally prefixed by a DNS subdomain and '/'`,
    );
  }
  for (const v of req.values) {
    if (!LABEL_VALUE.test(v))
      throw badRequest(
        `unable to parse requirement: "${term}": invalid label value "${v}": at most 63 alphanumeric characters, '-', '_' or '.', starting and ending with an alphanumeric character`,
      );
  }
  return req;
}

function test(req: Requirement, value: string | undefined): boolean {
  switch (req.op) {
    case '=':
      return value === req.values[0];
    case '!=':
      return value !== req.values[0];
    case 'in':
      return value !== undefined && req.values.includes(value);
    case 'notin':
      return value === undefined || !req.values.includes(value);
    case 'exists':
      return value !== undefined;
    case '!exists':
      return value === undefined;
  }
}

export function parseLabelSelector(s: string | undefined): Matcher | undefined {
  if (!s || !s.trim()) return undefined;
  const reqs = splitTerms(s).map(parseLabelTerm);
  return (obj) => {
    const labels = (obj.metadata as { labels?: Record<string, string> } | undefined)?.labels ?? {};
    return reqs.every((r) => test(r, labels[r.key]));
  };
}

/** Reads a dotted path (`status.phase`, `involvedObject.name`) as a string, as field selectors compare. */
export function fieldValue(obj: Record<string, unknown>, path: string): string | undefined {
  let cur: unknown = obj;
  for (const part of path.split('.')) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  if (cur === undefined || cur === null) return undefined;
  return typeof cur === 'object' ? JSON.stringify(cur) : String(cur);
}

export interface FieldRequirement {
  path: string;
  op: '=' | '!=';
  value: string;
}

export function parseFieldRequirements(s: string | undefined): FieldRequirement[] {
  if (!s || !s.trim()) return [];
  return splitTerms(s).map((term) => {
    const m = /^([A-Za-z0-9_.-]+)\s*(==|=|!=)\s*(.*)$/.exec(term);
    if (!m) throw badRequest(`invalid field selector: "${term}": expected field=value, field==value or field!=value`);
    return { path: m[1], op: m[2] === '!=' ? '!=' : '=', value: m[3].trim() } as FieldRequirement;
  });
}

/**
 * Vessel accepts any dotted path in a field selector (Kubernetes allows a fixed list per kind);
 * an absent field compares as the empty string, as in Kubernetes.
 */
export function parseFieldSelector(s: string | undefined): Matcher | undefined {
  const reqs = parseFieldRequirements(s);
  if (reqs.length === 0) return undefined;
  return (obj) =>
    reqs.every((r) => {
      const v = fieldValue(obj, r.path) ?? '';
      return r.op === '=' ? v === r.value : v !== r.value;
    });
}
