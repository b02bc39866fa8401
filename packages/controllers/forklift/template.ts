/**
 * Forklift's `pvcNameTemplate` (Plan.spec and spec.vms[]), a safe subset of Go's text/template:
 * literal text and `{{.Var}}` actions only (Forklift's variables `.VmName`, `.PlanName`,
 * `.DiskIndex`, `.RootDiskIndex`, `.Shared`). Anything else (`{{if}}`, pipelines, functions) is
 * refused with a reason, so a plan reports it instead of running an expression language.
 */

export interface PvcNameVars {
  VmName: string;
  PlanName: string;
  DiskIndex: number;
  RootDiskIndex: number;
  Shared: boolean;
}

export class TemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TemplateError';
  }
}

const VARS: readonly string[] = ['VmName', 'PlanName', 'DiskIndex', 'RootDiskIndex', 'Shared'];
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** The template's text with each `{{.Var}}` replaced; TemplateError for any other action or an unknown variable. */
export function renderTemplate(template: string, vars: PvcNameVars): string {
  let out = '';
  let rest = template;
  for (;;) {
    const open = rest.indexOf('{{');
    if (open < 0) {
      if (rest.includes('}}')) throw new TemplateError('unexpected "}}" outside an action');
      return out + rest;
    }
    const text = rest.slice(0, open);
    if (text.includes('}}')) throw new TemplateError('unexpected "}}" outside an action');
    out += text;
    const close = rest.indexOf('}}', open + 2);
    if (close < 0) throw new TemplateError('unclosed action: "{{" without "}}"');
    // Go's trim markers `{{- ` and ` -}}` are not supported: names have no whitespace to trim.
    const action = rest.slice(open + 2, close).trim();
    const m = /^\.([A-Za-z][A-Za-z0-9]*)$/.exec(action);
    if (!m) throw new TemplateError(`unsupported action "{{${action}}}": only {{.${VARS.join('}}, {{.')}}} are supported`);
    if (!VARS.includes(m[1])) throw new TemplateError(`unknown variable .${m[1]}: one of .${VARS.join(', .')}`);
    out += String(vars[m[1] as keyof PvcNameVars]);
    rest = rest.slice(close + 2);
  }
}

/** The claim name for one disk, or why not: a TemplateError, or a result that is not a DNS-1123 label. */
export function pvcName(template: string, vars: PvcNameVars): string {
  const name = renderTemplate(template, vars);
  if (name.length > 63 || !DNS1123_LABEL.test(name)) throw new TemplateError(`"${name}" (disk ${vars.DiskIndex}) is not a valid DNS-1123 label`);
  return name;
}
