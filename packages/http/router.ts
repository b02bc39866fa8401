/**
 * A tiny ordered router: method + path pattern → handler, first match wins. Patterns are
 * literal segments, `:name` (one segment, URI-decoded), `:name(a|b)` (one of those literal
 * segments) and a trailing `*` (the rest of the path: one segment or more). The API server and the
 * agent both route with it; neither may import the other, so it lives here.
 */

/** Named path parameters, already URI-decoded. */
export type Params = Readonly<Record<string, string>>;

/** `*` matches every method. */
export type Method = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | '*';

export interface Match<H> {
  handler: H;
  params: Params;
}

interface Route<H> {
  methods: readonly Method[];
  pattern: RegExp;
  names: string[];
  handler: H;
}

export class RouterPatternError extends Error {
  readonly code = 'InvalidRoutePattern';
  constructor(pattern: string, why: string) {
    super(`route pattern "${pattern}" is invalid: ${why}; use /literal, /:name, /:name(a|b) or a trailing /*`);
    this.name = 'RouterPatternError';
  }
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function compile(pattern: string): { pattern: RegExp; names: string[] } {
  if (!pattern.startsWith('/')) throw new RouterPatternError(pattern, 'it must start with /');
  const names: string[] = [];
  const segs = pattern === '/' ? [] : pattern.slice(1).split('/');
  let re = '';
  segs.forEach((seg, i) => {
    if (seg === '*') {
      if (i !== segs.length - 1) throw new RouterPatternError(pattern, '* must be the last segment');
      names.push('*');
      re += '/(.+)';
      return;
    }
    const param = /^:([A-Za-z_][A-Za-z0-9_]*)(?:\(([^()/]+)\))?$/.exec(seg);
    if (!param) {
      if (seg.includes(':') || seg.includes('*')) throw new RouterPatternError(pattern, `segment "${seg}" mixes a literal with a parameter`);
      re += `/${escape(seg)}`;
      return;
    }
    names.push(param[1]);
    re += param[2] ? `/(${param[2].split('|').map(escape).join('|')})` : '/([^/]+)';
  });
  return { pattern: new RegExp(`^${re || '/'}$`), names };
}

/** Routes in the order they were added; `match` returns the first whose method and pattern fit. */
export class Router<H> {
  private readonly routes: Route<H>[] = [];

  on(methods: Method | readonly Method[], pattern: string, handler: H): this {
    this.routes.push({ methods: typeof methods === 'string' ? [methods] : methods, ...compile(pattern), handler });
    return this;
  }

  /** `path` without the query string. A parameter that is not valid URI encoding is matched as is. */
  match(method: string, path: string): Match<H> | undefined {
    for (const r of this.routes) {
      if (!r.methods.includes('*') && !r.methods.includes(method as Method)) continue;
      const m = r.pattern.exec(path);
      if (!m) continue;
      const params: Record<string, string> = {};
      r.names.forEach((n, i) => {
        params[n] = decode(m[i + 1] ?? '');
      });
      return { handler: r.handler, params };
    }
    return undefined;
  }
}

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
