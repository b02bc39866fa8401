/**
 * The Forklift migration run against a real server (docs/forklift.md, "Migration run"): five
 * OVAs with small disks in one plan with a pvcNameTemplate and `--forklift-max-vm-inflight 2`;
 * never more than 2 VMs in DiskTransfer in the statuses seen; one VM with a larger disk is
 * canceled mid-transfer with `vessel plan cancel` (transfers paced by the test knob
 * VESSEL_TEST_FORKLIFT_BYTES_PER_SEC): its volumes are gone and it is Canceled, the others
 * complete with their disks' bytes (qemu-img compare); a PreHook script registered in the hook
 * directory and a PostHook URL (a loopback server made here) ran. No guest boots.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { eventually, run, startVessel, type Vessel } from './harness.ts';
import { forkliftObject, ovf, planSpec, providerRefs as testProviderRefs } from '../packages/controllers/forklift/testdata.ts';

const ref = (plural: string, group = 'forklift.konveyor.io', version = 'v1beta1'): ResourceRef => ({ group, version, plural, namespaced: true });
const PROVIDERS = ref('providers');
const NETMAPS = ref('networkmaps');
const STORAGEMAPS = ref('storagemaps');
const PLANS = ref('plans');
const HOOKS = ref('hooks');
const MIGRATIONS = ref('migrations');
const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };
const VMS = ref('virtualmachines', 'kubevirt.io', 'v1');
const DVS = ref('datavolumes', 'cdi.kubevirt.io', 'v1beta1');
const PVCS = ref('persistentvolumeclaims', '', 'v1');
const NS = 'fkrun-src';
const TARGET = 'fkrun-target';
const MiB = 1024 * 1024;
const NAMES = ['vm1', 'vm2', 'big', 'vm4', 'vm5'];
const claim = (vm: string) => `run-${vm}-d0`;

let v: Vessel;
let dir: string;
let hookServer: Server;
let hookPort = 0;
const posted: string[] = [];
const pace = process.env.VESSEL_TEST_FORKLIFT_BYTES_PER_SEC;

type Cond = { type: string; status: string; reason?: string; category?: string };
type VmS = { name: string; phase: string; conditions?: Cond[]; pipeline: { name: string; phase: string; tasks?: { progress: { completed: number } }[] }[] };
const conds = (o: KubeObject): Cond[] => (o.status as { conditions?: Cond[] } | undefined)?.conditions ?? [];
const isReady = (o: KubeObject) => conds(o).some((c) => c.type === 'Ready' && c.status === 'True');
const fk = (kind: string, name: string, spec: unknown): KubeObject => forkliftObject(kind, name, NS, spec);
const providerRefs = testProviderRefs('ova', NS);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fkrun-e2e-'));
  const root = join(dir, 'ova-root');
  const src = join(dir, 'src');
  const hookDir = join(dir, 'hooks');
  await mkdir(root);
  await mkdir(src);
  await mkdir(hookDir);
  await mkdir(join(dir, 'marks'));
  for (const [k, name] of NAMES.entries()) {
    // 8 MiB disks with a per-VM pattern (tiny VMDKs); "big" gets 3 MiB of random bytes, so its paced transfer lasts.
    const q = join(src, `${name}.qcow2`);
    if (name === 'big') {
      const raw = join(src, 'big.raw');
      await writeFile(raw, randomBytes(3 * MiB));
      execFileSync('qemu-img', ['resize', '-q', '-f', 'raw', raw, '8M']);
      execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, q]);
    } else {
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', q, '8M']);
      execFileSync('qemu-io', ['-c', `write -P 0x${(0x20 + k).toString(16)} 0 1M`, q], { stdio: 'ignore' });
    }
    execFileSync('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', q, join(src, `${name}.vmdk`)]);
    await writeFile(join(src, `${name}.ovf`), ovf([{ name, networks: ['VM Network'], disks: [{ file: `${name}.vmdk`, capacity: 8 * MiB }] }]));
    execFileSync('tar', ['-cf', join(root, `${name}.ova`), '-C', src, `${name}.ovf`, `${name}.vmdk`]);
  }
  await writeFile(join(hookDir, 'mark'), `#!/bin/sh\ncat > ${join(dir, 'marks')}/pre-$$.json\n`);
  await chmod(join(hookDir, 'mark'), 0o755);
  hookServer = createServer((req, res) => {
    let b = '';
    req.on('data', (c: Buffer) => (b += c.toString()));
    req.on('end', () => {
      posted.push(b);
      res.statusCode = 200;
      res.end('ok');
    });
  });
  await new Promise<void>((r) => hookServer.listen(0, '127.0.0.1', r));
  hookPort = (hookServer.address() as { port: number }).port;
  // The knob is read by the controller in this process: paced uploads, so a cancel lands mid-transfer.
  process.env.VESSEL_TEST_FORKLIFT_BYTES_PER_SEC = '262144';
  v = await startVessel({
    ovaRoots: [root],
    forkliftMaxInFlight: 2,
    forkliftHookDir: hookDir,
    agent: { nodeName: 'fkrun-node', allowLoopbackImports: true },
  });
  for (const ns of [NS, TARGET]) await v.client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
});

after(async () => {
  if (pace === undefined) delete process.env.VESSEL_TEST_FORKLIFT_BYTES_PER_SEC;
  else process.env.VESSEL_TEST_FORKLIFT_BYTES_PER_SEC = pace;
  hookServer?.close();
  await v?.close();
  await rm(dir, { recursive: true, force: true });
});

test('5 VMs, maxInFlight 2, one canceled mid-transfer with `vessel plan cancel`, pvcNameTemplate, a script PreHook and a URL PostHook', async () => {
  await v.client.create(PROVIDERS, fk('Provider', 'ova', { type: 'ova', url: `ova://${dir}/ova-root`, secret: {} }), { namespace: NS });
  await eventually('provider Ready', async () => {
    const o = await v.client.get(PROVIDERS, 'ova', { namespace: NS });
    return (o.status as { phase?: string } | undefined)?.phase === 'Ready' ? o : undefined;
  });
  await v.client.create(NETMAPS, fk('NetworkMap', 'net', { provider: providerRefs, map: [{ source: { name: 'VM Network' }, destination: { type: 'pod' } }] }), {
    namespace: NS,
  });
  const storage = NAMES.map((n) => ({ source: { name: `${n}.ova` }, destination: { storageClass: 'local' } }));
  await v.client.create(STORAGEMAPS, fk('StorageMap', 'disks', { provider: providerRefs, map: storage }), { namespace: NS });
  // Hooks: a registered script and a URL; the image is kept, not run (a Warn condition).
  const hook = (name: string, ann: Record<string, string>) => ({
    ...fk('Hook', name, { image: 'quay.io/konveyor/hook-runner', deadline: 30 }),
    metadata: { name, namespace: NS, annotations: ann },
  });
  await v.client.create(HOOKS, hook('pre', { 'forklift.vessel.io/hook-script': 'mark' }), { namespace: NS });
  await v.client.create(HOOKS, hook('post', { 'forklift.vessel.io/hook-url': `http://127.0.0.1:${hookPort}/post` }), { namespace: NS });
  // A path instead of a registered name: 422 naming the annotation, nothing stored.
  const evil = await v.client.create(HOOKS, hook('evil', { 'forklift.vessel.io/hook-script': '../../bin/sh' }), { namespace: NS }).catch((e: unknown) => e);
  assert.match(String((evil as Error).message), /metadata\.annotations\[forklift\.vessel\.io\/hook-script\]/);
  await assert.rejects(v.client.get(HOOKS, 'evil', { namespace: NS }), /not found/i);
  const pre = await eventually('hook pre Ready', async () => {
    const h = await v.client.get(HOOKS, 'pre', { namespace: NS });
    return isReady(h) ? h : undefined;
  });
  assert.ok(conds(pre).some((c) => c.type === 'ImageNotRun' && c.category === 'Warn'));

  const vms = NAMES.map((name) =>
    name === 'vm1'
      ? { name, hooks: [{ hook: { name: 'pre', namespace: NS }, step: 'PreHook' }] }
      : name === 'vm2'
        ? { name, hooks: [{ hook: { name: 'post', namespace: NS }, step: 'PostHook' }] }
        : { name },
  );
  // The disks hold no OS: with virt-v2v installed on the host, ImageConversion would fail them.
  const withTemplate = (template: string) =>
    planSpec({ provider: providerRefs, targetNamespace: TARGET, vms }, { pvcNameTemplate: template, skipGuestConversion: true });
  // A template giving an invalid name is a Critical concern naming it.
  await v.client.create(PLANS, fk('Plan', 'badtpl', withTemplate('{{.VmName}}_{{.DiskIndex}}')), { namespace: NS });
  const badPlan = await eventually('badtpl validated', async () => {
    const p = await v.client.get(PLANS, 'badtpl', { namespace: NS });
    return conds(p).some((c) => c.type === 'PVCNameTemplateNotValid') ? p : undefined;
  });
  assert.ok(!isReady(badPlan));
  await v.client.create(PLANS, fk('Plan', 'run', withTemplate('{{.PlanName}}-{{.VmName}}-d{{.DiskIndex}}')), { namespace: NS });
  await eventually('plan run Ready', async () => (isReady(await v.client.get(PLANS, 'run', { namespace: NS })) ? true : undefined), 60_000);

  const t0 = Date.now();
  await v.client.create(MIGRATIONS, fk('Migration', 'run-1', { plan: { name: 'run', namespace: NS } }), { namespace: NS });
  let maxTransferring = 0;
  let canceledAt = -1;
  let cancel: ReturnType<typeof run> | undefined;
  const m = await eventually(
    'migration finished',
    async () => {
      const o = await v.client.get(MIGRATIONS, 'run-1', { namespace: NS });
      const st = (o.status ?? {}) as { vms?: VmS[]; completed?: string };
      const list = st.vms ?? [];
      maxTransferring = Math.max(maxTransferring, list.filter((x) => x.phase === 'DiskTransfer').length);
      const big = list.find((x) => x.name === 'big');
      const bigTask = big?.pipeline.find((p) => p.name === 'DiskTransfer')?.tasks?.[0];
      if (!cancel && big?.phase === 'DiskTransfer' && (bigTask?.progress.completed ?? 0) > 0) {
        canceledAt = bigTask!.progress.completed;
        cancel = run('bin/vessel', ['--kubeconfig', v.kubeconfig, '-n', NS, 'plan', 'cancel', 'run', '--vm', 'big'], { timeoutMs: 60_000 });
      }
      return st.completed ? o : undefined;
    },
    120_000,
    200,
  );
  console.log(`5 VMs (one canceled at ${canceledAt} MB of 9), maxInFlight 2: ${Date.now() - t0} ms; at most ${maxTransferring} seen in DiskTransfer`);
  assert.ok(cancel, 'big was seen transferring');
  const c = await cancel;
  assert.equal(c.code, 0, c.err);
  assert.match(c.out, /cancel big/);
  assert.ok(maxTransferring <= 2 && maxTransferring >= 1, `${maxTransferring} VMs in DiskTransfer at once`);
  const st = m.status as { vms: VmS[] };
  const by = Object.fromEntries(st.vms.map((x) => [x.name, x]));
  assert.ok(
    conds(m).some((x) => x.type === 'Succeeded' && x.status === 'True'),
    JSON.stringify(conds(m)),
  );
  // The canceled VM: Completed with Canceled (Forklift's shape), its step Canceled, nothing left of it.
  assert.equal(by.big.phase, 'Completed');
  assert.deepEqual(
    by.big.conditions?.map((x) => [x.type, x.reason]),
    [['Canceled', 'UserRequested']],
  );
  assert.equal(by.big.pipeline.find((p) => p.name === 'DiskTransfer')?.phase, 'Canceled');
  // Its DataVolume and claim deleted; the claim goes once its agent removed the volume (a finalizer), which may come after the plan's end.
  for (const r of [DVS, PVCS])
    await eventually(
      `big's ${r.plural} gone`,
      async () =>
        v.client.get(r, claim('big'), { namespace: TARGET }).then(
          () => undefined,
          (e: Error) => (/not found/i.test(e.message) ? true : undefined),
        ),
      30_000,
    );
  await assert.rejects(v.client.get(VMS, 'big', { namespace: TARGET }), /not found/i);
  // The others: Succeeded, disks named by the template, bytes equal to the source.
  for (const name of NAMES.filter((n) => n !== 'big')) {
    assert.equal(by[name].conditions?.[0]?.type, 'Succeeded', `${name}: ${JSON.stringify(by[name])}`);
    const made = await v.client.get(VMS, name, { namespace: TARGET });
    const volumes = (made.spec as { template: { spec: { volumes: { dataVolume: { name: string } }[] } } }).template.spec.volumes;
    assert.deepEqual(
      volumes.map((x) => x.dataVolume.name),
      [claim(name)],
    );
    const pvc = await v.client.get(PVCS, claim(name), { namespace: TARGET });
    const path = (pvc.metadata?.annotations as Record<string, string>)['vessel.io/volume-path'];
    const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', join(dir, 'src', `${name}.qcow2`), path]);
    assert.equal(cmp.code, 0, cmp.out + cmp.err);
  }
  // Hooks: the steps in the pipelines, the script's marker, the URL's POST.
  assert.deepEqual(
    by.vm1.pipeline.map((p) => [p.name, p.phase]),
    [
      ['Initialize', 'Completed'],
      ['PreHook', 'Completed'],
      ['DiskTransfer', 'Completed'],
      ['VirtualMachineCreation', 'Completed'],
    ],
  );
  assert.deepEqual(by.vm2.pipeline.at(-1)?.name, 'PostHook');
  const marks = await readdir(join(dir, 'marks'));
  assert.equal(marks.length, 1);
  const mark = JSON.parse(await readFile(join(dir, 'marks', marks[0]), 'utf8')) as { step: string; vm: { name: string }; plan: { metadata: { name: string } } };
  assert.deepEqual([mark.step, mark.vm.name, mark.plan.metadata.name], ['PreHook', 'vm1', 'run']);
  assert.equal(posted.length, 1);
  const body = JSON.parse(posted[0]) as { step: string; vm: { name: string; namespace: string } };
  assert.deepEqual([body.step, body.vm.name, body.vm.namespace], ['PostHook', 'vm2', TARGET]);
});
