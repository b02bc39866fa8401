/**
 * Golden tests of the QEMU argv builder, the way Proxmox's qemu-server tests its config to
 * command line: testdata/<case>.yaml holds the input (VMI + accel + resolved volumes, networks,
 * firmware, kernel) and testdata/<case>.argv the expected argv, one argument per line
 * (UPDATE_GOLDEN=1 rewrites them). error-*.yaml cases list the exact field paths of the causes.
 * Every golden case whose files can be made in a temp dir is then started with the real QEMU
 * (-S, QMP on stdio) to prove QEMU accepts every option.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { V1Volume } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { applyVmiSpecDefaults } from '@vessel/api';
import { parse } from 'yaml';
import { blockNodeNames, buildQemuArgv, derivedMac, efiRequirements, supportedSpecFields, VmSpecError, type QemuArgv, type QemuInput } from './argv.ts';
import { buildCloudInitIso, cloudInitIsoOptions } from './cloudinit.ts';

const TESTDATA = fileURLToPath(new URL('./testdata/', import.meta.url));
const UPDATE = process.env.UPDATE_GOLDEN === '1';

interface Case extends QemuInput {
  applyDefaults?: boolean;
  launch?: boolean;
  expectCauses?: string[];
  expectWarnings?: string[];
  expectEnv?: Record<string, string>;
}

function loadCase(name: string): Case {
  const c = parse(readFileSync(join(TESTDATA, `${name}.yaml`), 'utf8')) as Case;
  c.volumes ??= {};
  if (c.applyDefaults) applyVmiSpecDefaults(c.vmi.spec as unknown as Record<string, unknown>, c.vmi.metadata.name);
  return c;
}

function inputOf(c: Case): QemuInput {
  const { vmi, accel, volumes, firmware, networks, kernelBoot, hugepagesPath, hostNumaNodes } = c;
  return { vmi, accel, volumes, firmware, networks, kernelBoot, hugepagesPath, hostNumaNodes };
}

const names = readdirSync(TESTDATA)
  .filter((f) => f.endsWith('.yaml'))
  .map((f) => f.slice(0, -'.yaml'.length))
  .sort();
const goldenNames = names.filter((n) => !n.startsWith('error-'));
const errorNames = names.filter((n) => n.startsWith('error-'));

describe('golden argv', () => {
  test('there are enough cases', () => {
    assert.ok(goldenNames.length >= 12, `only ${goldenNames.length} golden cases`);
    assert.ok(errorNames.length >= 5, `only ${errorNames.length} error cases`);
  });
  for (const name of goldenNames) {
    test(name, () => {
      const c = loadCase(name);
      const input = inputOf(c);
      const before = JSON.stringify(input);
      let out: QemuArgv;
      try {
        out = buildQemuArgv(input);
      } catch (e) {
        if (e instanceof VmSpecError) assert.fail(`${name}: ${e.message}`);
        throw e;
      }
      assert.equal(JSON.stringify(input), before, 'the input must not be modified');
      assert.deepEqual(buildQemuArgv(input), out, 'the same input must give the same argv');
      for (const a of out.argv) assert.ok(!a.includes('\n'), `argument with a newline: ${JSON.stringify(a)}`);
      assert.deepEqual(out.warnings, c.expectWarnings ?? []);
      assert.deepEqual(out.env, c.expectEnv ?? {});

      const file = join(TESTDATA, `${name}.argv`);
      const text = `${out.argv.join('\n')}\n`;
      if (UPDATE) writeFileSync(file, text);
      assert.ok(existsSync(file), `${file} is missing; run with UPDATE_GOLDEN=1 to create it`);
      assert.equal(text, readFileSync(file, 'utf8'), `${name}.argv differs (UPDATE_GOLDEN=1 rewrites it after review)`);
    });
  }
});

describe('refused specs name every field', () => {
  for (const name of errorNames) {
    test(name, () => {
      const c = loadCase(name);
      assert.ok(c.expectCauses, `${name}.yaml needs expectCauses`);
      let err: unknown;
      try {
        buildQemuArgv(inputOf(c));
      } catch (e) {
        err = e;
      }
      assert.ok(err instanceof VmSpecError, `expected a VmSpecError, got ${String(err)}`);
      assert.deepEqual(
        err.causes.map((x) => x.field),
        c.expectCauses,
        err.causes.map((x) => `${x.field}: ${x.message}`).join('\n'),
      );
      for (const cause of err.causes) {
        assert.match(cause.reason, /^FieldValue(NotSupported|Invalid|Required|Duplicate)$/);
        assert.ok(err.message.includes(cause.field));
      }
    });
  }

  test('error codes and messages', () => {
    const c = loadCase('error-lun');
    assert.throws(
      () => buildQemuArgv(inputOf(c)),
      (e: unknown) =>
        e instanceof VmSpecError &&
        e.code === 'UnsupportedVmSpec' &&
        e.causes.length === 1 &&
        e.causes[0].reason === 'FieldValueNotSupported' &&
        /^VirtualMachineInstance default\/lun-vm cannot be started: spec\.domain\.devices\.disks\[0\]\.lun: Unsupported field/.test(e.message),
    );
    const m = loadCase('error-missing-volumes');
    assert.throws(
      () => buildQemuArgv(inputOf(m)),
      (e: unknown) => e instanceof VmSpecError && e.code === 'InvalidVmSpec',
    );
    // A value named like an Object.prototype member is a refused value, not a crash.
    const p = inputOf(loadCase('minimal'));
    const disks = p.vmi.spec?.domain.devices.disks ?? [];
    disks[0] = { ...disks[0], errorPolicy: 'toString' };
    assert.throws(
      () => buildQemuArgv(p),
      (e: unknown) => e instanceof VmSpecError && e.causes.some((x) => x.field === 'spec.domain.devices.disks[0].errorPolicy'),
    );
  });

  test('bad agent input is a TypeError, not a spec error', () => {
    const c = loadCase('user-hostfwd');
    const bad = inputOf(c);
    bad.networks = { default: { kind: 'user', hostForwards: [{ proto: 'tcp', hostAddr: 'x,y', hostPort: 1, guestPort: 2 }] } };
    assert.throws(() => buildQemuArgv(bad), TypeError);
    const m = inputOf(loadCase('minimal'));
    m.volumes = { rootdisk: { path: '/x\n/y', format: 'qcow2' } };
    assert.throws(() => buildQemuArgv(m), TypeError);
  });
});

test('helpers: node names, MACs, EFI needs, the allow list', () => {
  const long = blockNodeNames('a-rather-long-disk-name-for-qemu-and-more');
  assert.ok(long.file.length <= 31 && long.format.length <= 31);
  assert.deepEqual(blockNodeNames('a-rather-long-disk-name-for-qemu-and-more'), long);
  assert.notEqual(blockNodeNames('a-rather-long-disk-name-for-qemu-and-less').format, long.format);
  assert.deepEqual(blockNodeNames('root'), { file: 'file-root', format: 'disk-root' });
  assert.match(derivedMac('ns', 'vm', 'default'), /^52:54:00(:[0-9a-f]{2}){3}$/);
  assert.equal(derivedMac('ns', 'vm', 'default'), derivedMac('ns', 'vm', 'default'));
  assert.notEqual(derivedMac('ns', 'vm', 'default'), derivedMac('ns', 'vm2', 'default'));
  assert.deepEqual(efiRequirements(loadCase('efi').vmi.spec), { efi: true, secureBoot: false });
  assert.deepEqual(efiRequirements(loadCase('efi-secureboot').vmi.spec), { efi: true, secureBoot: true });
  assert.deepEqual(efiRequirements(loadCase('minimal').vmi.spec), { efi: false, secureBoot: false });
  const fields = supportedSpecFields();
  assert.ok(fields.includes('domain.devices.disks[].cache'));
  assert.ok(fields.includes('domain.devices.autoattachVSOCK (false only)'));
  assert.ok(!fields.some((f) => f.startsWith('domain.devices.disks[].lun')));
});

test('caveats come back as warnings, not silence', () => {
  const input = inputOf(loadCase('minimal'));
  const spec = structuredClone(input.vmi.spec);
  spec.domain.machine = { type: 'pc-q35-rhel9.2.0' };
  spec.domain.memory = { guest: '100M' };
  spec.domain.cpu = { cores: 2 };
  spec.domain.devices.logSerialConsole = false;
  spec.domain.devices.networkInterfaceMultiqueue = true;
  spec.volumes = [...(spec.volumes ?? []), { name: 'spare', emptyDisk: { capacity: '1Gi' } }];
  const out = buildQemuArgv({ ...input, vmi: { ...input.vmi, spec } });
  assert.deepEqual(out.warnings, [
    'spec.domain.machine.type: pc-q35-rhel9.2.0 is a RHEL machine type; using q35',
    'spec.domain.memory.guest: 100M rounded up to 96Mi',
    'spec.domain.devices.interfaces[0]: networkInterfaceMultiqueue has no effect on a user-mode (slirp) network',
    'spec.volumes[1]: volume spare is not used by any disk',
    'spec.domain.devices.logSerialConsole: false has no effect: Vessel always keeps serial.log',
  ]);
  assert.equal(out.argv[out.argv.indexOf('-machine') + 1], 'q35');
  assert.equal(out.argv[out.argv.indexOf('-m') + 1], '96M');
});

test('the virtio-scsi controller for hotplugged disks: always there, first, unless disableHotplug and no scsi disk', () => {
  const controllers = (out: QemuArgv) => out.argv.filter((a) => a.startsWith('virtio-scsi-pci'));
  const input = inputOf(loadCase('minimal'));
  const plain = buildQemuArgv(input);
  assert.deepEqual(controllers(plain), ['virtio-scsi-pci,id=scsi0']);
  assert.ok(plain.argv.indexOf('virtio-scsi-pci,id=scsi0') < plain.argv.findIndex((a) => a.startsWith('driver=file')), 'before the disks');
  const spec = structuredClone(input.vmi.spec);
  spec.domain.devices.disableHotplug = true;
  assert.deepEqual(controllers(buildQemuArgv({ ...input, vmi: { ...input.vmi, spec } })), []);
  spec.domain.devices.disks = [{ name: 'rootdisk', disk: { bus: 'scsi' } }];
  assert.deepEqual(controllers(buildQemuArgv({ ...input, vmi: { ...input.vmi, spec } })), ['virtio-scsi-pci,id=scsi0'], 'a scsi disk still needs it');
});

test('vCPUs from CPU quantities: a zero one counts as unset (as in KubeVirt), a negative one is refused', () => {
  const input = inputOf(loadCase('minimal'));
  const smp = (resources: Record<string, unknown>) => {
    const spec = structuredClone(input.vmi.spec);
    spec.domain.resources = resources;
    const argv = buildQemuArgv({ ...input, vmi: { ...input.vmi, spec } }).argv;
    return argv[argv.indexOf('-smp') + 1];
  };
  assert.equal(smp({ requests: { memory: '128Mi', cpu: '0' } }), '1,sockets=1,cores=1,threads=1');
  assert.equal(smp({ requests: { memory: '128Mi', cpu: '3' }, limits: { cpu: '0' } }), '3,sockets=3,cores=1,threads=1');
  assert.equal(smp({ requests: { memory: '128Mi', cpu: '1500m' }, limits: { cpu: 2 } }), '2,sockets=2,cores=1,threads=1');
  assert.throws(
    () => smp({ requests: { memory: '128Mi', cpu: '-1' } }),
    (e: unknown) => e instanceof VmSpecError && e.causes[0].field === 'spec.domain.resources.requests.cpu',
  );
});

test('a disk and an interface with the same name would share a device id', () => {
  const input = inputOf(loadCase('minimal'));
  const spec = structuredClone(input.vmi.spec);
  spec.domain.devices.disks = [{ name: 'default', disk: { bus: 'virtio' } }];
  spec.volumes = [{ name: 'default', containerDisk: { image: 'x' } }];
  assert.throws(
    () => buildQemuArgv({ ...input, vmi: { ...input.vmi, spec }, volumes: { default: { path: '/x.qcow2', format: 'qcow2' } } }),
    (e: unknown) =>
      e instanceof VmSpecError &&
      e.causes.length === 1 &&
      e.causes[0].field === 'spec.domain.devices.disks[0].name' &&
      e.causes[0].reason === 'FieldValueDuplicate',
  );
});

// ---------------------------------------------------------------------------------------------
// QEMU accepts the argv: start it paused with QMP on stdio, wait for query-status to answer
// (QEMU answers only once every device is created; its greeting comes earlier), then quit.

const QEMU = 'qemu-system-x86_64';
const haveQemu = spawnSync(QEMU, ['--version']).status === 0 && spawnSync('qemu-img', ['--version']).status === 0;
const haveGenisoimage = spawnSync('genisoimage', ['-version']).status === 0;
const bootFiles = existsSync('/boot') ? readdirSync('/boot') : [];
const hostKernel = bootFiles.find((f) => f.startsWith('vmlinuz-'));
const hostInitrd = bootFiles.find((f) => f.startsWith('initrd.img-'));
const readable = (p: string): boolean => {
  try {
    accessSync(p, constants.R_OK);
    return true;
  } catch {
    return false;
  }
};

function qemuAccepts(out: QemuArgv): Promise<void> {
  const args = [...out.argv];
  for (const cd of out.chardevs) args.push('-chardev', `null,id=${cd.id}`);
  args.push('-S', '-qmp', 'stdio');
  return new Promise((resolve, reject) => {
    const child = spawn(QEMU, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...out.env } });
    let stdout = '';
    let stderr = '';
    let ready = false;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`QEMU did not answer within 15 s\n${stderr}`));
    }, 15_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (!ready && /"status": "prelaunch"/.test(stdout)) {
        ready = true;
        child.stdin.write('{"execute":"quit"}\n');
      }
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.on('error', () => {}); // QEMU may exit before reading; the exit reports why
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (ready) resolve();
      else reject(new Error(`QEMU refused the argv (exit ${code}):\n${stderr.trim()}\nargv: ${args.join(' ')}`));
    });
    child.stdin.write('{"execute":"qmp_capabilities"}\n{"execute":"query-status"}\n');
  });
}

describe('QEMU accepts the golden argv', { skip: haveQemu ? false : 'qemu-system-x86_64 or qemu-img missing' }, () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vessel-argv-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** The case with every host file made for real in `caseDir`; a string says why it cannot run. */
  async function materialize(c: Case, caseDir: string): Promise<QemuInput | string> {
    if (c.launch === false) return 'the case needs KVM, 1Gi hugepages or block devices';
    if (c.accel !== 'tcg') return 'not a TCG case';
    const input = structuredClone(inputOf(c));
    const specVolumes = (c.vmi.spec.volumes ?? []) as V1Volume[];
    for (const [vname, v] of Object.entries(input.volumes)) {
      if (v.block) return 'block device volume';
      const path = join(caseDir, basename(v.path));
      const specVol = specVolumes.find((sv) => sv.name === vname);
      if (specVol?.cloudInitNoCloud || specVol?.cloudInitConfigDrive) {
        if (!haveGenisoimage) return 'genisoimage missing';
        const opts = cloudInitIsoOptions({ vmi: c.vmi, volume: specVol, secretData: { userData: '#cloud-config\n' }, dest: path });
        await buildCloudInitIso(opts);
      } else if (v.format === 'qcow2') {
        const r = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, '16M'], { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(r.stderr);
      } else {
        await writeFile(path, Buffer.alloc(1 << 20));
      }
      v.path = path;
    }
    if (input.firmware) {
      if (!readable(input.firmware.ovmfCode)) return `${input.firmware.ovmfCode} missing`;
      const template = efiRequirements(c.vmi.spec).secureBoot ? '/usr/share/OVMF/OVMF_VARS_4M.ms.fd' : '/usr/share/OVMF/OVMF_VARS_4M.fd';
      if (!readable(template)) return `${template} missing`;
      input.firmware.ovmfVars = join(caseDir, 'OVMF_VARS.fd');
      await copyFile(template, input.firmware.ovmfVars);
    }
    if (input.kernelBoot) {
      if (!hostKernel || !readable(join('/boot', hostKernel))) return 'no readable kernel in /boot';
      input.kernelBoot.kernel = join('/boot', hostKernel);
      if (input.kernelBoot.initrd) {
        if (!hostInitrd || !readable(join('/boot', hostInitrd))) return 'no readable initrd in /boot';
        input.kernelBoot.initrd = join('/boot', hostInitrd);
      }
    }
    // Taps need CAP_NET_ADMIN and leave host state behind: their devices are checked on a
    // user-mode backend instead (same NIC model, MAC and boot options).
    for (const [iname, n] of Object.entries(input.networks ?? {})) {
      if (n.kind === 'tap' && input.networks) input.networks[iname] = { kind: 'user' };
    }
    // Guest NUMA bound to host nodes this host may not have: bound to those it has instead.
    if (input.hostNumaNodes) input.hostNumaNodes = input.hostNumaNodes.map((n) => (existsSync(`/sys/devices/system/node/node${n}`) ? n : 0));
    return input;
  }

  /** 2Mi hugepages a case needs (its guest memory), else 0. */
  function hugepagesNeeded(input: QemuInput): number {
    const mem = input.vmi.spec.domain.memory;
    if (!mem?.hugepages) return 0;
    if (mem.hugepages.pageSize !== '2Mi') throw new Error('only 2Mi hugepage cases can be launched');
    const m = /^(\d+)Mi$/.exec(String(mem.guest));
    if (!m) throw new Error(`guest memory ${String(mem.guest)} of a hugepage case must be in Mi`);
    return Number(m[1]) / 2;
  }

  /** Runs `fn` with `pages` more 2Mi hugepages reserved, restoring the pool after; a string when that is impossible. */
  async function withHugepages(pages: number, fn: () => Promise<void>): Promise<string | undefined> {
    if (pages === 0) return fn().then(() => undefined);
    const nr = '/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages';
    const free = '/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages';
    let before: string;
    try {
      accessSync(nr, constants.W_OK);
      before = readFileSync(nr, 'utf8').trim();
    } catch {
      return 'cannot reserve hugepages (not root, or no 2Mi hugepage pool)';
    }
    try {
      writeFileSync(nr, String(Number(before) + pages));
      if (Number(readFileSync(free, 'utf8')) < pages) return `the kernel could not reserve ${pages} hugepages`;
      await fn();
    } finally {
      writeFileSync(nr, before);
    }
    return undefined;
  }

  for (const name of goldenNames) {
    test(name, async (t) => {
      const c = loadCase(name);
      const caseDir = join(dir, name);
      await mkdir(caseDir);
      const input = await materialize(c, caseDir);
      if (typeof input === 'string') return t.skip(input);
      const skipped = await withHugepages(hugepagesNeeded(input), () => qemuAccepts(buildQemuArgv(input)));
      if (skipped) t.skip(skipped);
    });
  }
});
