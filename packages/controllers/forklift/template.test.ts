/** pvcNameTemplate: Go's template language as a name needs it rendered, everything else refused with a reason. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { diskFileName, pvcName, renderTemplate, TemplateError } from './template.ts';

const vars = { VmName: 'web', PlanName: 'p1', DiskIndex: 2, RootDiskIndex: 0, Shared: false, FileName: 'web_2.vmdk', WinDriveLetter: '' };

test('renderTemplate: literal text and {{.Var}} (spaces allowed) replaced by Forklift variables', () => {
  assert.equal(renderTemplate('{{.VmName}}-disk-{{.DiskIndex}}', vars), 'web-disk-2');
  assert.equal(renderTemplate('{{ .PlanName }}-{{.VmName}}-{{.RootDiskIndex}}-{{.Shared}}', vars), 'p1-web-0-false');
  assert.equal(renderTemplate('fixed', vars), 'fixed');
});

test('renderTemplate: {{if}}/{{else if}}/{{else}}, comparisons, pipelines, functions and trim markers, as Go renders them', () => {
  const rootOrData = '{{if eq .DiskIndex .RootDiskIndex}}root{{else}}data{{end}}-{{.DiskIndex}}';
  assert.equal(renderTemplate(rootOrData, vars), 'data-2');
  assert.equal(renderTemplate(rootOrData, { ...vars, DiskIndex: 0 }), 'root-0');
  assert.equal(renderTemplate('{{if .Shared}}s{{else if gt .DiskIndex 1}}big{{else}}small{{end}}', vars), 'big');
  assert.equal(renderTemplate('{{if and .Shared (eq .PlanName "p1")}}a{{else if or .Shared (ne .VmName "x")}}b{{end}}', vars), 'b');
  assert.equal(renderTemplate('{{if not .Shared}}{{.VmName | upper | lower}}{{end}}', { ...vars, VmName: 'WeB' }), 'web');
  assert.equal(renderTemplate('{{printf "%s-%03d" .VmName .DiskIndex}}', vars), 'web-002');
  assert.equal(renderTemplate('{{printf "%.3s" .VmName}}-{{len .PlanName}}', { ...vars, VmName: 'database' }), 'dat-2');
  assert.equal(renderTemplate('{{.VmName | printf "%s-x"}}', vars), 'web-x');
  assert.equal(renderTemplate('a  {{- .DiskIndex -}}  b', vars), 'a2b');
  assert.equal(renderTemplate('{{trim " x "}}{{title "a-b"}}', vars), 'xA-B');
  // Other variable sets (an openshift source's) render the same way.
  assert.equal(renderTemplate('{{.SourcePVCName}}', { SourcePVCName: 'disk-a' }), 'disk-a');
});

test('renderTemplate: unsupported actions, unknown functions or variables, bad types and unbalanced blocks are TemplateErrors', () => {
  for (const [t, why] of [
    ['{{range .VmName}}x{{end}}', /unsupported action/],
    ['{{$x := 1}}', /unsupported action/],
    ['{{/* c */}}', /unsupported action/],
    ['{{.VmName | sha256}}', /function "sha256" not defined/],
    ['{{.Nope}}', /unknown variable \.Nope/],
    ['{{.VmName', /unclosed/],
    ['a}}b', /outside an action/],
    ['{{if .Shared}}x', /without \{\{end\}\}/],
    ['x{{end}}', /unexpected \{\{end\}\}/],
    ['{{if .Shared}}a{{else}}b{{else}}c{{end}}', /after \{\{else\}\}/],
    ['{{eq .DiskIndex "2"}}', /incompatible types/],
    ['{{lower .DiskIndex}}', /lower takes a string/],
    ['{{.VmName .PlanName}}', /too many values/],
    ['{{(.VmName}}', /unclosed "\("/],
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

test(".FileName is the disk file's last path component (a vSphere datastore path or an OVF href), .WinDriveLetter empty when unknown", () => {
  assert.equal(diskFileName('[datastore1] VMs/test-vm/test-vm-disk1.vmdk'), 'test-vm-disk1.vmdk');
  assert.equal(diskFileName('[ds 2] web.vmdk'), 'web.vmdk');
  assert.equal(diskFileName('disks/web-1.vmdk'), 'web-1.vmdk');
  assert.equal(diskFileName('web-1.vmdk'), 'web-1.vmdk');
  assert.equal(renderTemplate('{{.FileName}}', vars), 'web_2.vmdk');
  assert.equal(renderTemplate('{{if .WinDriveLetter}}{{.WinDriveLetter}}{{else}}nodrive{{end}}-{{.DiskIndex}}', vars), 'nodrive-2');
  assert.equal(pvcName('{{.VmName}}-{{.WinDriveLetter}}', { ...vars, WinDriveLetter: 'c' }), 'web-c');
  // The suffix makes it no DNS-1123 label by itself: a template cuts it.
  assert.throws(() => pvcName('{{.FileName}}', vars), /is not a valid DNS-1123 label/);
  assert.equal(pvcName('{{printf "%.5s" .FileName | lower}}', { ...vars, FileName: 'WEB-2.vmdk' }), 'web-2');
});
