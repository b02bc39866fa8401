/**
 * A minimal XML reader for OVF descriptors: elements, attributes and text, names kept with their
 * prefix and also matched by local name. No DTDs or entity declarations (an OVF needs none, and
 * they are how entity-expansion bombs and external-entity reads work): those are refused.
 */

export interface XmlElement {
  /** Local name, without the namespace prefix ("Item" for "ovf:Item"). */
  name: string;
  /** Attributes by local name ("href" for "ovf:href"); the first of two same local names wins. */
  attrs: Record<string, string>;
  children: XmlElement[];
  text: string;
}

export class XmlError extends Error {
  readonly code = 'OvfMalformed';
}

const local = (n: string): string => n.slice(n.indexOf(':') + 1);

function decode(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);/g, (_, e: string) => {
    if (e[0] === '#') return String.fromCodePoint(e[1] === 'x' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
    return { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }[e] ?? '';
  });
}

/** Parses `text` into its root element; XmlError (code OvfMalformed) when it is not well-formed enough to read. */
export function parseXml(text: string): XmlElement {
  if (/<!DOCTYPE|<!ENTITY/i.test(text)) throw new XmlError('DTDs and entity declarations are not allowed in an OVF');
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  const re =
    /<!--[\s\S]*?-->|<\?[\s\S]*?\?>|<!\[CDATA\[([\s\S]*?)\]\]>|<\/\s*([^\s>]+)\s*>|<([^\s/>]+)((?:\s+[^\s=/>]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>|([^<]+)/g;
  const attrRe = /([^\s=/>]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g;
  let m: RegExpExecArray | null;
  let pos = 0;
  while ((m = re.exec(text))) {
    if (m.index !== pos) throw new XmlError(`unexpected character at offset ${pos}`);
    pos = re.lastIndex;
    const top = stack[stack.length - 1];
    if (m[1] !== undefined) {
      if (top) top.text += m[1];
    } else if (m[2] !== undefined) {
      const el = stack.pop();
      if (!el || el.name !== local(m[2])) throw new XmlError(`unexpected closing tag </${m[2]}>`);
    } else if (m[3] !== undefined) {
      const el: XmlElement = { name: local(m[3]), attrs: {}, children: [], text: '' };
      for (const a of (m[4] ?? '').matchAll(attrRe)) {
        const k = local(a[1]);
        if (!(k in el.attrs)) el.attrs[k] = decode(a[2] ?? a[3] ?? '');
      }
      if (top) top.children.push(el);
      else if (root) throw new XmlError('more than one root element');
      else root = el;
      if (m[5] !== '/') stack.push(el);
    } else if (m[6] !== undefined) {
      if (top) top.text += decode(m[6]);
      else if (m[6].trim()) throw new XmlError('text outside the root element');
    }
  }
  if (pos !== text.length) throw new XmlError(`unexpected character at offset ${pos}`);
  if (stack.length) throw new XmlError(`unclosed element <${stack[stack.length - 1].name}>`);
  if (!root) throw new XmlError('no root element');
  return root;
}

/** Direct children named `name` (local name). */
export const kids = (el: XmlElement | undefined, name: string): XmlElement[] => el?.children.filter((c) => c.name === name) ?? [];
/** The first direct child named `name`. */
export const kid = (el: XmlElement | undefined, name: string): XmlElement | undefined => el?.children.find((c) => c.name === name);
/** Every descendant named `name`, depth first. */
export function descendants(el: XmlElement, name: string): XmlElement[] {
  const out: XmlElement[] = [];
  for (const c of el.children) {
    if (c.name === name) out.push(c);
    out.push(...descendants(c, name));
  }
  return out;
}
