/**
 * A node whose agent dies, end to end: the control plane in this process, the node agent
 * `vessel agent` in a child process (heartbeat every second, grace 6 s), QEMU under TCG running
 * the tiny guest. When the agent is SIGKILLed the guest keeps counting; the node turns Unknown,
 * its VMI Ready=False (NodeUnresponsive), and a new VM is not placed there. When the agent
 * comes back it adopts the same QEMU: the VMI is Ready again, the guest never rebooted, and the
 * waiting VM starts. An agent that only stalls (SIGSTOP) sets its VMI Ready again by itself.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { AUTOGROUP_NICE, autogroupNice, setAutogroupNice } from '../packages/agent/qemu/priority.ts';
import { ensureTinyImage } from '../packages/cli/golden.ts';
import { eventually, startVessel, type Vessel } from './harness.ts';
import { counters, runDirOf, serialLog, tinyVm } from './tiny-vm.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };
const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };
const NODES: ResourceRef = { group: '', version: 'v1', plural: 'nodes', namespaced: false };
const DV: ResourceRef = { group: 'cdi.kubevirt.io', version: 'v1beta1', plural: 'datavolumes', namespaced: true };
const ns = 'default';
type Condition = { type: string; status: string; reason?: string; message?: string };

let v: Vessel;
let agentDir: string;
let agent: ChildProcess | undefined;

/** `vessel agent` for node-a in a child process; resolves once it says it runs. */
async function startAgent(): Promise<ChildProcess> {
  const p = spawn(
    'bin/vessel',
    ['--kubeconfig', v.kubeconfig, 'agent', '--node-name', 'node-a', '--data-dir', agentDir, '--node-status-update-frequency', '1'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  await new Promise<void>((resolve, reject) => {
    let out = '';
    p.stdout!.on('data', (d) => {
      out += d;
      if (/agent running as node node-a/.test(out)) resolve();
    });
    p.stderr!.on('data', () => undefined);
    p.on('exit', (code) => reject(new Error(`vessel agent exited with ${code} before it ran`)));
  });
  return p;
}

async function killAgent(): Promise<void> {
  if (!agent || agent.exitCode !== null || agent.signalCode !== null) return;
  const gone = new Promise((r) => agent!.once('exit', r));
  agent.kill('SIGKILL');
  await gone;
}

const conditions = (o: KubeObject) => (o.status as { conditions?: Condition[] } | undefined)?.conditions ?? [];
const condition = (o: KubeObject, type: string) => conditions(o).find((c) => c.type === type);
const nodeReady = async () => condition(await v.client.get(NODES, 'node-a'), 'Ready');
const vmiReady = async (name: string) => condition(await v.client.get(VMI, name, { namespace: ns }), 'Ready');
const serial = (name: string) => serialLog(agentDir, ns, name);
const qemuPid = async (name: string) => (await readFile(join((await runDirOf(agentDir, ns, name)) ?? '/nonexistent', 'qemu.pid'), 'utf8')).trim();

before(async () => {
  v = await startVessel({ nodeGracePeriodMs: 6000 });
  agentDir = await mkdtemp(join(tmpdir(), 'vessel-agent-'));
  agent = await startAgent();
  await ensureTinyImage(v.client, () => undefined);
});
after(async () => {
  if (agent?.exitCode !== null || agent?.signalCode !== null) agent = await startAgent().catch(() => undefined);
  for (const vm of (await v.client.list(VM, { namespace: ns })).items) await v.client.delete(VM, vm.metadata!.name!, { namespace: ns }).catch(() => undefined);
  await eventually('all VMIs gone', async () => ((await v.client.list(VMI, { namespace: ns })).items.length === 0 ? true : undefined), 120_000).catch(
    () => undefined,
  );
  await killAgent();
  await v.close();
  await rm(agentDir, { recursive: true, force: true });
});

test('a node that posts its heartbeat stays Ready; one that stops goes Unknown after the grace period', async () => {
  const heartbeat = async () => {
    const conditions = [
      {
        type: 'Ready',
        status: 'True',
        reason: 'AgentReady',
        message: 'posting',
        lastHeartbeatTime: new Date().toISOString(),
        lastTransitionTime: '2026-01-01T00:00:00Z',
      },
    ];
    const node = await v.client.get(NODES, 'node-z');
    await v.client.update(NODES, { ...node, status: { ...(node.status as object), conditions } }, { subresource: 'status' });
  };
  await v.client.create(NODES, { apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-z' }, spec: {} });
  const started = Date.now();
  let lastBeat = 0;
  while (Date.now() - started < 12_000) {
    await heartbeat();
    lastBeat = Date.now();
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(condition(await v.client.get(NODES, 'node-z'), 'Ready')?.status, 'True', 'a node that posts stays Ready past the grace period');
  }
  const c = await eventually(
    'node-z Unknown',
    async () => {
      const r = condition(await v.client.get(NODES, 'node-z'), 'Ready');
      return r?.status === 'Unknown' ? r : undefined;
    },
    20_000,
    200,
  );
  const after = Date.now() - lastBeat;
  console.log(`# node-z Unknown ${after} ms after its last heartbeat (grace 6 s)`);
  assert.ok(after >= 5500 && after < 10_000, `Unknown ${after} ms after the last heartbeat (grace 6 s)`);
  assert.match(c.message ?? '', /stopped posting node status/);
  await v.client.delete(NODES, 'node-z');
});

test('an agent killed: the node goes Unknown, the guest runs on, and the agent adopts it again', async () => {
  await v.client.create(VM, tinyVm('steady'), { namespace: ns });
  // The disk of a VM made while the agent is gone, made now (only an agent makes disks).
  await v.client.create(
    DV,
    {
      apiVersion: 'cdi.kubevirt.io/v1beta1',
      kind: 'DataVolume',
      metadata: { name: 'waiting-root', namespace: ns },
      spec: { sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'vessel-images' }, storage: { resources: { requests: { storage: '1Gi' } } } },
    },
    { namespace: ns },
  );
  await eventually(
    'DataVolume waiting-root Succeeded',
    async () =>
      ((await v.client.get(DV, 'waiting-root', { namespace: ns })).status as { phase?: string } | undefined)?.phase === 'Succeeded' ? true : undefined,
    120_000,
  );
  await eventually('the guest counting', async () => (counters(await serial('steady')).length >= 2 ? true : undefined), 300_000, 500);
  assert.equal((await vmiReady('steady'))?.status, 'True');
  const pid = await qemuPid('steady');
  const boots = (await serial('steady')).split('VESSEL-GUEST-READY').length;

  await killAgent();
  const t0 = Date.now();
  const unknown = await eventually(
    'node-a Ready Unknown',
    async () => {
      const c = await nodeReady();
      return c?.status === 'Unknown' ? c : undefined;
    },
    60_000,
    250,
  );
  console.log(`# node-a Unknown ${Date.now() - t0} ms after the agent was killed (grace 6 s, heartbeat 1 s)`);
  assert.equal(unknown.reason, 'NodeStatusUnknown');
  const vmiCond = await eventually(
    'VMI steady NodeUnresponsive',
    async () => {
      const c = await vmiReady('steady');
      return c?.reason === 'NodeUnresponsive' ? c : undefined;
    },
    30_000,
    250,
  );
  assert.equal(vmiCond.status, 'False');
  // Nothing is done to the VM: it keeps running without its agent.
  const before = Math.max(...counters(await serial('steady')));
  await eventually(
    'the guest counting on without its agent',
    async () => (Math.max(...counters(await serial('steady'))) >= before + 3 ? true : undefined),
    60_000,
    500,
  );
  assert.equal(((await v.client.get(VMI, 'steady', { namespace: ns })).status as { phase: string }).phase, 'Running');
  // As an agent that died during a paused migration transfer leaves its QEMU: boosted to nice 0
  // (vms/migration-boost.ts). The agent that adopts it puts the launch weight back.
  const boosted = (await autogroupNice(pid)) === AUTOGROUP_NICE && (await setAutogroupNice(Number(pid), 0));
  // A new VM is not placed on the unreachable node.
  await v.client.create(VM, tinyVm('waiting', { dataVolume: 'waiting-root' }), { namespace: ns });
  const unschedulable = await eventually(
    'VMI waiting unschedulable',
    async () => {
      const vmi = await v.client.get(VMI, 'waiting', { namespace: ns }).catch(() => undefined);
      const c = vmi && condition(vmi, 'PodScheduled');
      return c?.status === 'False' ? c : undefined;
    },
    30_000,
    250,
  );
  assert.match(unschedulable.message ?? '', /unreachable/);

  agent = await startAgent();
  await eventually('node-a Ready again', async () => ((await nodeReady())?.status === 'True' ? true : undefined), 30_000, 250);
  await eventually('VMI steady Ready again', async () => ((await vmiReady('steady'))?.status === 'True' ? true : undefined), 30_000, 250);
  assert.equal(await qemuPid('steady'), pid, 'the same QEMU runs the guest');
  if (boosted) assert.equal(await autogroupNice(pid), AUTOGROUP_NICE, 'the adopted QEMU runs at its launch weight again');
  else console.log('# no autogroups here (or QEMU not launched at their lightest weight): the launch weight is not checked');
  assert.equal((await serial('steady')).split('VESSEL-GUEST-READY').length, boots, 'the guest never rebooted');
  await eventually('the waiting VM counting', async () => (counters(await serial('waiting')).length >= 1 ? true : undefined), 300_000, 500);

  // An agent that only stalls (SIGSTOP, as a long pause or a partition) sets Ready back itself
  // when it goes on: it sees its VMI marked and knows the QEMU it holds runs.
  agent.kill('SIGSTOP');
  await eventually(
    'VMI steady NodeUnresponsive again',
    async () => ((await vmiReady('steady'))?.reason === 'NodeUnresponsive' ? true : undefined),
    30_000,
    250,
  );
  agent.kill('SIGCONT');
  await eventually('VMI steady Ready after the stall', async () => ((await vmiReady('steady'))?.status === 'True' ? true : undefined), 30_000, 250);
  await eventually('node-a Ready after the stall', async () => ((await nodeReady())?.status === 'True' ? true : undefined), 30_000, 250);
  assert.equal(await qemuPid('steady'), pid);
});
