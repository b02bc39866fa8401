/**
 * Tests for the preemption choice (kube-scheduler's DefaultPreemption): victims only of lower
 * priority, as few and as low as will make room, the node whose victims matter least, the
 * policies (Never; LiveMigrate victims go elsewhere when they fit), and the overhead math.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { OVERHEAD, vmiOverheadBytes, type NodeLike, type Requests } from './fit.ts';
import { choosePreemption, victimsOnNode, type PlacedVmi, type PreemptionInput } from './preemption.ts';

const Mi = 2 ** 20;
const Gi = 2 ** 30;

function node(name: string, memory = '4Gi', extra: Partial<NodeLike> = {}): NodeLike {
  return {
    metadata: { name, labels: { 'kubernetes.io/hostname': name } },
    status: { allocatable: { cpu: '4', memory }, conditions: [{ type: 'Ready', status: 'True' }] },
    ...extra,
  };
}

const req = (memMi: number): Requests => ({ cpuMillis: 100, memoryBytes: memMi * Mi });
let t = 0;
function vmi(key: string, nodeName: string, memMi: number, priority: number, more: Partial<PlacedVmi> = {}): PlacedVmi {
  return { key, nodeName, requests: req(memMi), priority, startedAt: ++t, liveMigrate: false, ...more };
}

function input(placed: PlacedVmi[], nodes: NodeLike[], memMi: number, priority: number, more: Partial<PreemptionInput['vmi']> = {}): PreemptionInput {
  return { vmi: { spec: {}, requests: req(memMi), priority, preemptionPolicy: 'PreemptLowerPriority', ...more }, nodes, placed };
}

const keys = (r: ReturnType<typeof choosePreemption>) =>
  r.node === undefined ? r.reason : `${r.node}: ${r.victims.map((v) => `${v.key}/${v.action}`).join(',')}`;

describe('preemption', () => {
  it('evicts the lowest-priority VMIs that make room, and reprieves the rest', () => {
    // 4Gi node: 1Gi@10, 1Gi@20, 1Gi@30, 1Gi@1000; the preemptor wants 2Gi at 500: two must go, the lowest two.
    const placed = [vmi('a', 'n1', 1024, 10), vmi('b', 'n1', 1024, 20), vmi('c', 'n1', 1024, 30), vmi('d', 'n1', 1024, 1000)];
    assert.equal(keys(choosePreemption(input(placed, [node('n1')], 2048, 500))), 'n1: b/stop,a/stop');
  });

  it('takes as few victims as fit: one big one rather than two small ones of the same priority', () => {
    const placed = [vmi('small1', 'n1', 512, 10), vmi('small2', 'n1', 512, 10), vmi('big', 'n1', 2048, 10), vmi('keep', 'n1', 1024, 100)];
    const r = choosePreemption(input(placed, [node('n1')], 2048, 50));
    // Reprieve goes highest priority first, then the oldest: small1, small2 stay if the preemptor still fits.
    assert.equal(keys(r), 'n1: big/stop');
  });

  it('never evicts equal or higher priority: a node full of them is no candidate', () => {
    const placed = [vmi('eq', 'n1', 2048, 100), vmi('hi', 'n1', 2048, 200)];
    assert.equal(keys(choosePreemption(input(placed, [node('n1')], 1024, 100))), 'No preemption victims found for incoming VMI.');
    assert.equal(victimsOnNode(input(placed, [node('n1')], 1024, 100), node('n1')), undefined);
  });

  it('preemptionPolicy Never preempts nothing', () => {
    const placed = [vmi('low', 'n1', 4096, 0)];
    assert.equal(keys(choosePreemption(input(placed, [node('n1')], 1024, 1000, { preemptionPolicy: 'Never' }))), 'not eligible due to preemptionPolicy=Never.');
  });

  it('picks the node whose victims matter least: lowest top priority, then lowest sum, then fewest', () => {
    const nodes = [node('n1'), node('n2'), node('n3')];
    const placed = [
      vmi('n1-a', 'n1', 4096, 50), // one victim at 50
      vmi('n2-a', 'n2', 2048, 40), // two victims at 40 and 40: top 40 < 50
      vmi('n2-b', 'n2', 2048, 40),
      vmi('n3-a', 'n3', 2048, 40), // two victims at 40 and 30: same top, lower sum
      vmi('n3-b', 'n3', 2048, 30),
    ];
    assert.equal(keys(choosePreemption(input(placed, nodes, 3072, 100))), 'n3: n3-a/stop,n3-b/stop');
    // Same top and sum: fewer victims wins.
    const p2 = [vmi('x1', 'n1', 2048, 20), vmi('x2', 'n1', 2048, 20), vmi('y', 'n2', 4096, 20), vmi('z', 'n2', 0, 20)];
    assert.equal(keys(choosePreemption(input(p2, [node('n1'), node('n2')], 3072, 100))), 'n2: y/stop');
  });

  it('only nodes short of cpu or memory are candidates (taints and selectors are not solved by evicting)', () => {
    const tainted = node('n1', '4Gi', { spec: { taints: [{ key: 'dedicated', value: 'db', effect: 'NoSchedule' }] } });
    assert.equal(keys(choosePreemption(input([vmi('low', 'n1', 4096, 0)], [tainted], 1024, 1000))), 'No preemption victims found for incoming VMI.');
  });

  it('a LiveMigrate victim moves to a node with room; without room, or without the strategy, it stops', () => {
    const nodes = [node('n1', '2Gi'), node('n2', '2Gi')];
    const placed = [
      vmi('mig', 'n1', 1024, 0, { liveMigrate: true, spec: {} }),
      vmi('stay', 'n1', 1024, 0),
      vmi('other', 'n2', 1024, 1000), // n2 has room for exactly one 1Gi VMI
    ];
    const r = choosePreemption(input(placed, nodes, 2048, 100));
    assert.equal(r.node, 'n1');
    assert.deepEqual(r.node && r.victims.map((v) => [v.key, v.action, v.to]), [
      ['mig', 'migrate', 'n2'],
      ['stay', 'stop', undefined],
    ]);
    // Two migratable victims, room elsewhere for one: the second stops.
    const both = [vmi('m1', 'n1', 1024, 0, { liveMigrate: true }), vmi('m2', 'n1', 1024, 0, { liveMigrate: true }), vmi('other', 'n2', 1024, 1000)];
    const r2 = choosePreemption(input(both, nodes, 2048, 100));
    assert.deepEqual(r2.node && r2.victims.map((v) => v.action), ['migrate', 'stop']);
  });
});

describe('memory overhead', () => {
  it("follows KubeVirt's terms without virt-launcher's processes", () => {
    // 128Mi, 1 vCPU, graphics: 30 + 72 (TCG) + 0.25 (128Mi/512) + 8 + 8 + 16 MiB.
    assert.equal(vmiOverheadBytes(128 * Mi, {}), (30 + 72 + 8 + 8 + 16) * Mi + (128 * Mi) / 512);
    // 1Gi, 2 vCPUs: 2 MiB of page tables, 16 MiB of vCPUs.
    assert.equal(vmiOverheadBytes(Gi, { domain: { cpu: { cores: 2 } } }), (30 + 72 + 2 + 16 + 8 + 16) * Mi);
    // No graphics device: no video RAM; KVM: no TCG term.
    const headless = { domain: { devices: { autoattachGraphicsDevice: false } } };
    assert.equal(vmiOverheadBytes(Gi, headless) - vmiOverheadBytes(Gi, {}), -OVERHEAD.videoBytes);
    assert.equal(vmiOverheadBytes(Gi, {}, 'tcg') - vmiOverheadBytes(Gi, {}, 'kvm'), OVERHEAD.tcgBytes);
  });
});
