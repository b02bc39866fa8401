/**
 * The decisions behind running QEMU below the control plane: the --qemu-priority option, the
 * nice/chrt command chain, cgroup v2 detection (delegated, hybrid, not delegated) and the
 * cgroup settings a VM's requests and limits give. The cgroup files are written into a
 * directory laid out like cgroupfs.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  applyLaunchWeight,
  AUTOGROUP_NICE,
  autogroupNice,
  cgroup2Mount,
  cgroupSettings,
  DEFAULT_QEMU_PRIORITY,
  detectCgroupV2,
  joinCgroup,
  ownCgroupV2Path,
  parseQemuPriority,
  prepareCgroupParent,
  removeVmCgroup,
  setAutogroupNice,
  vmCgroup,
  wrapLaunch,
  type CgroupProbe,
} from './priority.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test('--qemu-priority: default nice 10 + SCHED_BATCH + cgroups; off; lists override the default; bad items are refused', () => {
  assert.deepEqual(parseQemuPriority('default'), { nice: 10, batch: true, cgroups: true });
  assert.deepEqual(parseQemuPriority('nice=10,batch,cgroups'), DEFAULT_QEMU_PRIORITY);
  assert.deepEqual(parseQemuPriority('off'), { nice: 0, batch: false, cgroups: false });
  assert.deepEqual(parseQemuPriority('nice=19,no-batch'), { nice: 19, batch: false, cgroups: true });
  assert.deepEqual(parseQemuPriority('no-cgroups'), { nice: 10, batch: true, cgroups: false });
  assert.throws(() => parseQemuPriority('nice=20'), /out of range 0\.\.19/);
  assert.throws(() => parseQemuPriority('nice=-5'), /unknown item "nice=-5"/);
  assert.throws(() => parseQemuPriority('idle'), /unknown item "idle"/);
});

test("QEMU is exec'd through nice and chrt --batch so it starts with them; missing tools or priority off leave it alone", () => {
  const tools = { nice: '/usr/bin/nice', chrt: '/usr/bin/chrt' };
  assert.deepEqual(wrapLaunch('qemu', ['-m', '96'], { nice: 10, batch: true, tools }), {
    file: '/usr/bin/nice',
    args: ['-n', '10', '/usr/bin/chrt', '--batch', '0', 'qemu', '-m', '96'],
  });
  assert.deepEqual(wrapLaunch('qemu', ['-m', '96'], { nice: 0, batch: true, tools }), { file: '/usr/bin/chrt', args: ['--batch', '0', 'qemu', '-m', '96'] });
  assert.deepEqual(wrapLaunch('qemu', ['-m', '96'], { nice: 5, batch: true, tools: { nice: '/bin/nice' } }), {
    file: '/bin/nice',
    args: ['-n', '5', 'qemu', '-m', '96'],
  });
  assert.deepEqual(wrapLaunch('qemu', ['-m', '96'], { nice: 0, batch: false, tools }), { file: 'qemu', args: ['-m', '96'] });
  assert.deepEqual(wrapLaunch('qemu', ['-m', '96'], undefined), { file: 'qemu', args: ['-m', '96'] });
});

test('a node namespace (dev cluster) puts nsenter in front of the priority chain', () => {
  const tools = { nice: '/usr/bin/nice', chrt: '/usr/bin/chrt' };
  const ns = ['nsenter', '--net=/run/netns/vsl-ab12-n0', '--'];
  assert.deepEqual(wrapLaunch('qemu', ['-m', '96'], { nice: 10, batch: true, tools }, ns), {
    file: 'nsenter',
    args: ['--net=/run/netns/vsl-ab12-n0', '--', '/usr/bin/nice', '-n', '10', '/usr/bin/chrt', '--batch', '0', 'qemu', '-m', '96'],
  });
  assert.deepEqual(wrapLaunch('qemu', ['-m', '96'], undefined, ns), { file: 'nsenter', args: ['--net=/run/netns/vsl-ab12-n0', '--', 'qemu', '-m', '96'] });
});

/** A host seen through its /proc files and a set of writable directories. */
function fakeHost(files: Record<string, string>, writable: string[] = []): CgroupProbe {
  return { readFile: async (f) => files[f], writable: async (d) => writable.includes(d) };
}

const V2_MOUNTINFO = '25 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n';
const HYBRID_MOUNTINFO = [
  '30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw',
  '31 25 0:27 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,cpu',
  '32 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:7 - cgroup cgroup rw,memory',
].join('\n');
const UNIT = '/system.slice/vessel-agent.service';

test('cgroup v2 detection: a delegated unit with cpu and memory is used; hybrid, undelegated and v1-only hosts are not', async () => {
  assert.deepEqual(cgroup2Mount(HYBRID_MOUNTINFO), { mountPoint: '/sys/fs/cgroup/unified', root: '/' });
  assert.equal(cgroup2Mount('31 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu'), undefined);
  assert.deepEqual(cgroup2Mount('25 1 0:22 / /mnt/cg\\040v2 rw - cgroup2 cgroup2 rw'), { mountPoint: '/mnt/cg v2', root: '/' });
  assert.equal(ownCgroupV2Path(`0::${UNIT}\n`), UNIT);
  assert.equal(ownCgroupV2Path('4:memory:/x\n1:cpu:/\n'), undefined);

  const unitDir = `/sys/fs/cgroup${UNIT}`;
  const delegated = fakeHost({ '/p/mountinfo': V2_MOUNTINFO, '/p/cgroup': `0::${UNIT}\n`, [`${unitDir}/cgroup.controllers`]: 'cpuset cpu io memory pids\n' }, [
    unitDir,
  ]);
  assert.deepEqual(await detectCgroupV2(delegated, '/p'), { kind: 'v2', parent: `${unitDir}/vms` });

  const notDelegated = fakeHost({ '/p/mountinfo': V2_MOUNTINFO, '/p/cgroup': `0::${UNIT}\n`, [`${unitDir}/cgroup.controllers`]: 'cpu memory pids' });
  const r1 = await detectCgroupV2(notDelegated, '/p');
  assert.equal(r1.kind, 'none');
  assert.match(r1.kind === 'none' ? r1.reason : '', /not delegated/);

  // This development machine's layout: v1 controllers, an empty-handed v2 mount beside them.
  const hybrid = fakeHost(
    { '/p/mountinfo': HYBRID_MOUNTINFO, '/p/cgroup': '4:memory:/process_api/x\n1:cpu:/\n0::/\n', '/sys/fs/cgroup/unified/cgroup.controllers': 'hugetlb\n' },
    ['/sys/fs/cgroup/unified'],
  );
  const r2 = await detectCgroupV2(hybrid, '/p');
  assert.equal(r2.kind, 'none');
  assert.match(r2.kind === 'none' ? r2.reason : '', /no cpu or memory controller/);

  const v1 = fakeHost({ '/p/mountinfo': '31 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n', '/p/cgroup': '1:cpu:/\n' });
  assert.deepEqual(await detectCgroupV2(v1, '/p'), { kind: 'none', reason: 'no cgroup v2 hierarchy is mounted' });

  // A container whose cgroup namespace root is the mount's root: its own path is below it.
  const nested = fakeHost(
    {
      '/p/mountinfo': '25 1 0:22 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw',
      '/p/cgroup': '0::/kubepods/pod1/c\n',
      '/sys/fs/cgroup/c/cgroup.controllers': 'cpu memory',
    },
    ['/sys/fs/cgroup/c'],
  );
  assert.deepEqual(await detectCgroupV2(nested, '/p'), { kind: 'v2', parent: '/sys/fs/cgroup/c/vms' });
});

test('this host: VM cgroups are used only where a v2 group with cpu and memory is writable', async () => {
  const r = await detectCgroupV2();
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  if (!cgroup2Mount(mountinfo)) assert.equal(r.kind, 'none');
  if (r.kind === 'v2') assert.match(await readFile(join(r.parent, '..', 'cgroup.controllers'), 'utf8'), /\bcpu\b.*\bmemory\b|\bmemory\b.*\bcpu\b/);
});

test('cgroup settings: CPU requests as kubelet weights, CPU limits as a quota, memory plus overhead', () => {
  const Mi = 1024 * 1024;
  // kubelet: 1 CPU = 1024 shares = weight 39; 30m = 31 shares = weight 2; the minimum is 1.
  assert.deepEqual(cgroupSettings({ requests: { cpu: '1', memory: '1Gi' } }, 'kvm'), {
    'cpu.weight': '39',
    'cpu.max': 'max 100000',
    'memory.max': String(1024 * Mi + 128 * Mi),
  });
  assert.equal(cgroupSettings({ requests: { cpu: '30m' } }, 'tcg')['cpu.weight'], '2');
  assert.equal(cgroupSettings({ requests: { cpu: '1m' } }, 'tcg')['cpu.weight'], '1');
  assert.equal(cgroupSettings({ requests: { cpu: '4' } }, 'tcg')['cpu.weight'], '157');
  assert.equal(cgroupSettings({ requests: { cpu: '1000' } }, 'tcg')['cpu.weight'], '10000');
  // No CPU request: KubeVirt's 100m per vCPU.
  assert.equal(cgroupSettings({}, 'tcg')['cpu.weight'], cgroupSettings({ requests: { cpu: '100m' } }, 'tcg')['cpu.weight']);
  assert.equal(cgroupSettings({ limits: { cpu: '500m' } }, 'tcg')['cpu.max'], '50000 100000');
  assert.equal(cgroupSettings({ limits: { cpu: '2' } }, 'tcg')['cpu.max'], '200000 100000');
  assert.equal(cgroupSettings({ limits: { cpu: '1m' } }, 'tcg')['cpu.max'], '1000 100000', "the kernel's smallest quota");
  // The largest of limit, request and guest memory, plus TCG's overhead; nothing known: no limit.
  assert.equal(cgroupSettings({ requests: { memory: '96Mi' } }, 'tcg')['memory.max'], String(96 * Mi + 256 * Mi));
  assert.equal(
    cgroupSettings({ requests: { memory: '96Mi' }, limits: { memory: '512Mi' }, guestMemory: '256Mi' }, 'tcg')['memory.max'],
    String(512 * Mi + 256 * Mi),
  );
  assert.equal(cgroupSettings({ guestMemory: '2Gi' }, 'kvm')['memory.max'], String(2048 * Mi + 128 * Mi));
  assert.equal(cgroupSettings({}, 'kvm')['memory.max'], 'max');
});

test('a delegated group: the agent moves into a leaf, VM groups get their settings and the QEMU pid, and go when empty', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vessel-cgroup-'));
  dirs.push(root);
  const own = join(root, 'vessel-agent.service');
  await mkdir(own);
  await writeFile(join(own, 'cgroup.procs'), '4242\n');
  const parent = join(own, 'vms');
  await prepareCgroupParent(parent, 4242);
  assert.equal(await readFile(join(own, 'agent', 'cgroup.procs'), 'utf8'), '4242');
  assert.equal(await readFile(join(own, 'cgroup.subtree_control'), 'utf8'), '+cpu +memory');
  assert.equal(await readFile(join(parent, 'cgroup.subtree_control'), 'utf8'), '+cpu +memory');

  const settings = cgroupSettings({ requests: { cpu: '250m', memory: '96Mi' }, limits: { cpu: '1' } }, 'tcg');
  const dir = await vmCgroup(parent, '0b7e3c1a-uid', settings);
  assert.equal(dir, join(parent, '0b7e3c1a-uid'));
  assert.equal(await readFile(join(dir, 'cpu.weight'), 'utf8'), settings['cpu.weight']);
  assert.equal(await readFile(join(dir, 'cpu.max'), 'utf8'), '100000 100000');
  assert.equal(await readFile(join(dir, 'memory.max'), 'utf8'), String((96 + 256) * 1024 * 1024));
  await joinCgroup(dir, 5151);
  assert.equal(await readFile(join(dir, 'cgroup.procs'), 'utf8'), '5151');
  await assert.rejects(vmCgroup(parent, '../escape', settings), /plain uid/);
  // Not empty (here: files; in cgroupfs: processes): left for later, no error.
  await removeVmCgroup(parent, '0b7e3c1a-uid');
  await mkdir(join(parent, 'empty'));
  await removeVmCgroup(parent, 'empty');
  assert.equal(existsSync(dir), true);
  assert.equal(existsSync(join(parent, 'empty')), false);
});

test(
  "a QEMU's session gets its launch weight back (an agent that re-adopts one a dead agent left boosted); priority off leaves it alone",
  { skip: !(existsSync('/proc/self/autogroup') && process.getuid?.() === 0) && 'no autogroups or not root' },
  async () => {
    // A stand-in for a daemonized QEMU: a session of its own.
    const child = spawn('sleep', ['60'], { detached: true, stdio: 'ignore' });
    const pid = child.pid!;
    const nice = () => autogroupNice(pid);
    try {
      // Boosted for a paused transfer (nice 0), its agent gone.
      assert.ok(await setAutogroupNice(pid, 0));
      assert.ok(await applyLaunchWeight(pid, DEFAULT_QEMU_PRIORITY.nice));
      assert.equal(await nice(), AUTOGROUP_NICE);
      // `--qemu-priority off`: QEMU runs at the agent's weight; nothing is changed.
      assert.ok(await setAutogroupNice(pid, 5));
      assert.ok(await applyLaunchWeight(pid, 0));
      assert.equal(await nice(), 5);
    } finally {
      child.kill('SIGKILL');
    }
  },
);
