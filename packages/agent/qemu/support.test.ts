/**
 * Admission and the argv builder must agree on which VMI fields Vessel implements (both use
 * VMI_SPEC_FIELDS from @vessel/api, and its lists of supported values where KubeVirt allows more):
 * a field admission accepts must not make the VM fail at start,
 * and a field the builder refuses must be refused at admission, with a 422 cause naming it.
 * Checked for every field of the upstream VirtualMachineInstanceSpec schema, and for a table of
 * representative specs through admission's whole validation and the whole builder.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import {
  findByKind,
  supportedValues,
  upstreamSchemas,
  validateObject,
  vmiSpecFieldPatterns,
  type FieldCause,
  type JsonSchema,
  type KubeObject,
  type SupportedValue,
} from '@vessel/api';
import { parse } from 'yaml';
import { buildQemuArgv, VmSpecError, type QemuInput } from './argv.ts';

type Obj = Record<string, unknown>;
const VMI = findByKind('kubevirt.io/v1', 'VirtualMachineInstance')!;
const VM = findByKind('kubevirt.io/v1', 'VirtualMachine')!;

/** The golden `minimal` case: a defaulted VMI plus what the agent resolved for it. */
const minimal = (): QemuInput => parse(readFileSync(new URL('./testdata/minimal.yaml', import.meta.url), 'utf8')) as QemuInput;

interface Outcome {
  /** Every cause, as "field: message". */
  all: string[];
  /** Fields refused because Vessel does not implement them (or only their false value). */
  unsupported: string[];
  warnings: string[];
}

/** Refused because Vessel does not implement it: a field, a false-only feature on, or a value. */
const isUnsupported = (c: FieldCause) => c.reason === 'FieldValueNotSupported';
const outcome = (causes: FieldCause[], warnings: string[], strip: string): Outcome => ({
  all: causes.map((c) => `${c.field}: ${c.message}`),
  unsupported: causes
    .filter(isUnsupported)
    .map((c) => c.field.replace(strip, 'spec.'))
    .sort(),
  warnings,
});

function admit(spec: Obj): Outcome {
  const r = validateObject(
    VMI,
    { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', metadata: { name: 'minimal', namespace: 'default' }, spec } as KubeObject,
    'create',
  );
  return outcome(r.causes, r.warnings, 'spec.');
}

/** The same spec as a VM template: the paths differ, the verdict must not. */
function admitVm(spec: Obj): Outcome {
  const vm = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name: 'minimal', namespace: 'default' },
    spec: { runStrategy: 'Halted', template: { spec } },
  };
  const r = validateObject(VM, vm as KubeObject, 'create');
  return outcome(r.causes, r.warnings, 'spec.template.spec.');
}

function build(spec: Obj): Outcome {
  const input = minimal();
  try {
    const out = buildQemuArgv({ ...input, vmi: { ...input.vmi, spec: spec as unknown as QemuInput['vmi']['spec'] } });
    return { all: [], unsupported: [], warnings: out.warnings };
  } catch (e) {
    if (!(e instanceof VmSpecError)) throw e;
    return outcome(e.causes, [], 'spec.');
  }
}

// ---------------------------------------------------------------------------------------------
// Every field of the upstream schema, set to a plain value of its type.

type Schema = JsonSchema & {
  $ref?: string;
  allOf?: Schema[];
  items?: Schema;
  properties?: Record<string, Schema>;
  additionalProperties?: unknown;
  enum?: unknown[];
  type?: string;
  format?: string;
};
const schemas = upstreamSchemas() as Record<string, Schema>;
const deref = (s: Schema): Schema => {
  if (s.$ref) return deref(schemas[s.$ref.replace('#/components/schemas/', '')]);
  if (s.allOf?.length === 1) return deref(s.allOf[0]);
  return s;
};

interface Field {
  path: string[];
  value: unknown;
}

/** Leaf and struct fields below `s`; `[]` in a path is a list's (first) item. */
function fields(s: Schema, path: string[], seen: string[], out: Field[]): void {
  const d = deref(s);
  const name = s.$ref ?? s.allOf?.[0]?.$ref;
  if (name && seen.includes(name)) return; // recursive types: once is enough
  const nextSeen = name ? [...seen, name] : seen;
  if (d.type === 'array' && d.items) {
    fields(d.items, [...path, '[]'], nextSeen, out);
    return;
  }
  if (d.properties && Object.keys(d.properties).length > 0) {
    out.push({ path, value: {} });
    for (const [k, sub] of Object.entries(d.properties)) fields(sub, [...path, k], nextSeen, out);
    return;
  }
  const value = d.enum?.length
    ? d.enum[0]
    : name?.endsWith('resource.Quantity')
      ? '1'
      : name?.endsWith('util.intstr.IntOrString')
        ? 1
        : d.type === 'integer' || d.type === 'number'
          ? 1
          : d.type === 'boolean'
            ? false // false: a false-only field is off, hence implemented
            : d.type === 'string'
              ? 'x'
              : {};
  out.push({ path, value });
}

/** The minimal spec with `value` at `path`, on the existing first list item where there is one. */
function withField(f: Field): Obj {
  const spec = structuredClone(minimal().vmi.spec) as unknown as Obj;
  let at: Obj = spec;
  f.path.forEach((seg, i) => {
    const last = i === f.path.length - 1;
    const nextIsItem = f.path[i + 1] === '[]';
    if (seg === '[]') return;
    if (last) {
      at[seg] = structuredClone(f.value);
      return;
    }
    if (nextIsItem) {
      if (!Array.isArray(at[seg]) || (at[seg] as unknown[]).length === 0) at[seg] = [{}];
      const item = (at[seg] as unknown[])[0];
      if (i + 1 === f.path.length - 1) {
        (at[seg] as unknown[])[0] = structuredClone(f.value);
        return;
      }
      at = item as Obj;
      return;
    }
    if (typeof at[seg] !== 'object' || at[seg] === null) at[seg] = {};
    at = at[seg] as Obj;
  });
  return spec;
}

describe('admission and the argv builder agree on every upstream VMI field', () => {
  const all: Field[] = [];
  fields({ $ref: '#/components/schemas/io.kubevirt.v1.VirtualMachineInstanceSpec' } as Schema, [], [], all);
  const list = all.filter((f) => f.path.length > 0);

  test('the walk covers the schema', () => {
    assert.ok(list.length > 300, `only ${list.length} fields`);
    for (const p of [
      'domain.devices.interfaces.[].pciAddress',
      'domain.clock.timezone',
      'domain.devices.watchdog.i6300esb.action',
      'domain.devices.gpus.[].deviceName',
    ]) {
      assert.ok(
        list.some((f) => f.path.join('.') === p),
        p,
      );
    }
  });

  test('refused by one exactly when refused by the other; never "accepted and ignored"', () => {
    const mismatches: string[] = [];
    let refused = 0;
    const fieldLevel = (o: Outcome) =>
      o.unsupported.filter((f) => o.all.some((c) => c.startsWith(`${f}: `) && /: (Unsupported field|Unsupported value: .*only false)/.test(c)));
    for (const f of list) {
      const spec = withField(f);
      const a = admit(spec);
      const b = build(spec);
      const v = admitVm(spec);
      if (a.all.length > 0) refused++;
      const where = f.path.join('.');
      // The one list: the same fields refused as not implemented, by both, in VMIs and VM templates.
      if (JSON.stringify(fieldLevel(a)) !== JSON.stringify(fieldLevel(b)))
        mismatches.push(`${where}: admission ${JSON.stringify(fieldLevel(a))} vs argv ${JSON.stringify(fieldLevel(b))}`);
      if (JSON.stringify(v.unsupported) !== JSON.stringify(a.unsupported))
        mismatches.push(`${where}: VM template ${JSON.stringify(v.unsupported)} vs VMI ${JSON.stringify(a.unsupported)}`);
      // Whatever the builder refuses as not supported (a field or a value), admission refuses there.
      for (const u of b.unsupported) if (!a.all.some((c) => c.startsWith(`${u}: `))) mismatches.push(`${where}: argv refuses ${u}, admission accepts it`);
      // What admission accepts, the builder builds, unless it needs something this node lacks
      // (the minimal case's node has no OVMF and extracted no kernel).
      const fromNode = (c: string) => /not available on this node|not been extracted/.test(c);
      if (a.all.length === 0 && b.all.some((c) => !fromNode(c))) mismatches.push(`${where}: admitted, but argv: ${b.all.join('; ')}`);
      for (const w of [...a.warnings, ...v.warnings]) if (/not implemented/.test(w)) mismatches.push(`${where}: warned: ${w}`);
    }
    assert.deepEqual(mismatches, []);
    assert.ok(refused > 100 && refused < list.length - 50, `${refused} of ${list.length} fields refused`);
  });

  test('every value a field lists is accepted by admission and built by the argv builder', () => {
    const lists = vmiSpecFieldPatterns().filter((p) => !p.includes(' ('));
    let checked = 0;
    for (const pattern of lists) {
      let vals: readonly SupportedValue[];
      try {
        vals = supportedValues(pattern);
      } catch {
        continue; // not a value list
      }
      const path = pattern.replaceAll('[]', '.[]').split('.');
      for (const value of vals) {
        const spec = withField({ path, value });
        const field = `spec.${pattern.replaceAll('[]', '[0]')}`;
        const a = admit(spec).all.filter((c) => c.startsWith(`${field}: `));
        const b = build(spec).all.filter((c) => c.startsWith(`${field}: `));
        assert.deepEqual([a, b], [[], []], `${pattern} = ${JSON.stringify(value)}`);
        checked++;
      }
      const bad = withField({ path, value: typeof vals[0] === 'string' ? 'no-such-value' : vals[0] === true ? false : 7 });
      const field = `spec.${pattern.replaceAll('[]', '[0]')}`;
      assert.ok(
        admit(bad).all.some((c) => c.startsWith(`${field}: Unsupported value`)),
        `admission refuses a value outside ${pattern}`,
      );
      assert.ok(
        build(bad).all.some((c) => c.startsWith(`${field}: Unsupported value`)),
        `argv refuses a value outside ${pattern}`,
      );
    }
    assert.ok(checked > 25, `${checked} values`);
  });
});

// ---------------------------------------------------------------------------------------------
// Representative specs through everything both sides check.

type Edit = (spec: Obj & { domain: Obj & { devices: Obj & { interfaces: Obj[]; disks: Obj[] } }; volumes: Obj[] }) => void;
const cases: Array<[string, Edit, string[]]> = [
  ['the golden minimal spec', () => undefined, []],
  [
    'clock, watchdog, chassis and video: implemented, so neither warned nor refused',
    (s) => {
      s.domain.clock = { timezone: 'Europe/Berlin', timer: { hpet: { present: false } } };
      s.domain.chassis = { manufacturer: 'Vessel' };
      s.domain.devices.watchdog = { name: 'wd', i6300esb: { action: 'poweroff' } };
      s.domain.devices.video = { type: 'virtio' };
    },
    [],
  ],
  [
    'interfaces[].pciAddress: refused by both',
    (s) => {
      s.domain.devices.interfaces[0].pciAddress = '0000:81:00.1';
    },
    ['spec.domain.devices.interfaces[0].pciAddress'],
  ],
  [
    'a GPU and a host disk: refused by both',
    (s) => {
      s.domain.devices.gpus = [{ name: 'gpu1', deviceName: 'nvidia.com/TU104GL' }];
      s.volumes.push({ name: 'scratch', hostDisk: { path: '/tmp/x.img', type: 'DiskOrCreate' } });
      s.domain.devices.disks.push({ name: 'scratch', disk: { bus: 'sata' } });
    },
    ['spec.domain.devices.gpus', 'spec.volumes[1].hostDisk'],
  ],
  [
    'isolateEmulatorThread needs dedicatedCpuPlacement: refused (invalid) by both',
    (s) => {
      s.domain.cpu = { cores: 2, dedicatedCpuPlacement: false, isolateEmulatorThread: true };
    },
    [],
  ],
  [
    'dedicated CPUs with an isolated emulator thread on 2Mi hugepages',
    (s) => {
      s.domain.cpu = { cores: 2, dedicatedCpuPlacement: true, isolateEmulatorThread: true };
      s.domain.memory = { guest: '128Mi', hugepages: { pageSize: '2Mi' } };
    },
    [],
  ],
  [
    'guest NUMA passthrough without dedicated CPUs and hugepages: refused (invalid) by both',
    (s) => {
      s.domain.cpu = { cores: 2, numa: { guestMappingPassthrough: {} } };
    },
    [],
  ],
  [
    'probes and DNS settings: refused by both',
    (s) => {
      s.livenessProbe = { tcpSocket: { port: 22 } };
      s.dnsPolicy = 'None';
    },
    ['spec.dnsPolicy', 'spec.livenessProbe'],
  ],
  [
    'masquerade takes no options',
    (s) => {
      s.domain.devices.interfaces[0].masquerade = { foo: 1 };
    },
    ['spec.domain.devices.interfaces[0].masquerade.foo'],
  ],
  [
    'a zero CPU request counts as unset',
    (s) => {
      s.domain.resources = { requests: { memory: '128Mi', cpu: '0' } };
    },
    [],
  ],
  [
    'empty lists ask for nothing',
    (s) => {
      s.domain.devices.gpus = [];
      s.domain.devices.hostDevices = [];
    },
    [],
  ],
  // Values KubeVirt allows and Vessel does not: refused by both, at the value's field.
  [
    'an arm64 guest',
    (s) => {
      s.architecture = 'arm64';
    },
    ['spec.architecture'],
  ],
  [
    'a machine type QEMU has no such name for',
    (s) => {
      s.domain.machine = { type: 'isapc' };
    },
    ['spec.domain.machine.type'],
  ],
  [
    'a RHEL machine type maps to q35',
    (s) => {
      s.domain.machine = { type: 'pc-q35-rhel9.2.0' };
    },
    [],
  ],
  [
    'a USB disk',
    (s) => {
      s.domain.devices.disks[0].disk = { bus: 'usb' };
    },
    ['spec.domain.devices.disks[0].disk.bus'],
  ],
  // Syntax QEMU needs: checked by the same functions on both sides.
  [
    'a multicast MAC',
    (s) => {
      s.domain.devices.interfaces[0].macAddress = '03:00:00:00:00:01';
    },
    [],
  ],
  [
    'a firmware UUID QEMU cannot parse',
    (s) => {
      (s.domain.firmware as Obj).uuid = 'not-a-uuid';
    },
    [],
  ],
  [
    '8Mi of memory',
    (s) => {
      s.domain.memory = { guest: '8Mi' };
    },
    [],
  ],
  [
    'a SCSI cdrom',
    (s) => {
      s.domain.devices.disks[0] = { name: 'rootdisk', cdrom: { bus: 'scsi', readonly: true, tray: 'closed' } };
    },
    [],
  ],
];

describe('representative specs: admission accepts exactly what the argv builder builds', () => {
  for (const [name, edit, refused] of cases) {
    test(name, () => {
      const spec = structuredClone(minimal().vmi.spec) as unknown as Parameters<Edit>[0];
      edit(spec);
      const a = admit(spec);
      const b = build(spec);
      assert.deepEqual(a.unsupported, refused, a.all.join('\n'));
      assert.deepEqual(b.unsupported, refused, b.all.join('\n'));
      assert.equal(a.all.length === 0, b.all.length === 0, `admission: ${a.all.join('; ') || 'accepted'}\nargv: ${b.all.join('; ') || 'built'}`);
      for (const f of refused)
        assert.ok(
          a.all.some((c) => c.startsWith(`${f}: Unsupported`)),
          `admission names ${f}`,
        );
      assert.deepEqual(a.warnings, []);
      assert.deepEqual(admitVm(spec).unsupported, refused, 'the same as a VM template');
    });
  }
});
