/** pvcNameTemplate: the `{{.Var}}` subset rendered, everything else refused with a reason. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pvcName, renderTemplate, TemplateError } from './template.ts';

const vars = { VmName: 'web', PlanName: 'p1', DiskIndex: 2, RootDiskIndex: 0, Shared: false };

test('renderTemplate: literal text and {{.Var}} (spaces allowed) replaced by Forklift variables', () => {
  assert.equal(renderTemplate('{{.VmName}}-disk-{{.DiskIndex}}', vars), 'web-disk-2');
  assert.equal(renderTemplate('{{ .PlanName }}-{{.VmName}}-{{.RootDiskIndex}}-{{.Shared}}', vars), 'p1-web-0-false');
  assert.equal(renderTemplate('fixed', vars), 'fixed');
});

test('renderTemplate: other actions, unknown variables and unbalanced braces are TemplateErrors', () => {
  for (const [t, why] of [
    ['{{if eq .DiskIndex .RootDiskIndex}}root{{end}}', /unsupported action/],
    ['{{.VmName | lower}}', /unsupported action/],
    ['{{.Nope}}', /unknown variable \.Nope/],
    ['{{.VmName', /unclosed/],
    ['a}}b', /outside an action/],
    ['{{printf "%s" .VmName}}', /unsupported action/],
  ] as const)
    assert.throws(
      () => renderTemplate(t, vars),
      (e: unknown) => e instanceof TemplateError && why.test(e.message),
      t,
    );
});

test('pvcName: the result must be a DNS-1123 label', () => {
  assert.equal(pvcName('{{.PlanName}}-{{.VmName}}-{{.DiskIndex}}', vars), 'p1-web-2');
  assert.throws(() => pvcName('{{.VmName}}_{{.DiskIndex}}', vars), /"web_2" \(disk 2\) is not a valid DNS-1123 label/);
  assert.throws(() => pvcName('Disk-{{.DiskIndex}}', vars), /not a valid DNS-1123/);
  assert.throws(() => pvcName('x'.repeat(64), vars), /not a valid DNS-1123/);
  assert.throws(() => pvcName('{{.DiskIndex}}-', vars), /not a valid DNS-1123/);
});
