/**
 * Tests for the VM scheduler's placement logic: vmiRequests' KubeVirt semantics, each filter
 * and its kube-scheduler wording, the histogram message, and scoring order.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  describeUnschedulable,
  OVERHEAD,
  matchesNodeSelectorTerm,
  migrationTargetPlacements,
  scheduleVmi,
  toleratesTaint,
  vmiRequests,
  type NodeLike,
  type NodeSelectorTermLike,
  type Requests,
  type ScheduleInput,
  type ScheduleResult,
  type TaintLike,
  type TolerationLike,
  type VmiSchedulingSpec,
} from './fit.ts';

const Mi = 2 ** 20;
const Gi = 2 ** 30;
/** The formula spelled out (vmiOverheadBytes): QEMU + TCG, guest/512, 8 MiB per vCPU, the I/O thread, video RAM. */
const overhead = (guest: number, vcpus = 1) =>
  OVERHEAD.qemuBytes + OVERHEAD.tcgBytes + Math.ceil(guest / 512) + vcpus * OVERHEAD.perVcpuBytes + OVERHEAD.iothreadBytes + OVERHEAD.videoBytes;

interface NodeOpts {
  cpu?: string;
  memory?: string;
  labels?: Record<string, string>;
  taints?: TaintLike[];
  unschedulable?: boolean;
  /** Ready condition status; null: no conditions at all. */
  ready?: 'True' | 'False' | 'Unknown' | null;
}

function node(name: string, o: NodeOpts = {}): NodeLike {
  const ready = o.ready === undefined ? 'True' : o.ready;
  return {
    metadata: { name, labels: o.labels ?? { 'kubernetes.io/hostname': name } },
    spec: { taints: o.taints, unschedulable: o.unschedulable },
    status: {
      allocatable: { cpu: o.cpu ?? '4', memory: o.memory ?? '8Gi' },
      conditions:
        ready === null
          ? []
          : [
              { type: 'MemoryPressure', status: 'False' },
              { type: 'Ready', status: ready },
            ],
    },
  };
}

/** A small VM: 1 vCPU (100m at ratio 10), 1Gi guest. */
function spec(extra: Partial<VmiSchedulingSpec> = {}): VmiSchedulingSpec {
  return { domain: { memory: { guest: '1Gi' } }, ...extra };
}

function run(nodes: NodeLike[], s: VmiSchedulingSpec = spec(), more: Partial<ScheduleInput> = {}): ScheduleResult {
  return scheduleVmi({ vmi: { metadata: { name: 'vm', namespace: 'default' }, spec: s }, nodes, placed: [], ...more });
}

function msg(r: ScheduleResult): string {
  assert.equal(r.node, undefined, `expected unschedulable, got ${r.node}`);
  return r.node === undefined ? r.message : '';
}

const one = (reason: string) => `0/1 nodes are available: 1 ${reason}.`;

describe('vmiRequests', () => {
  const cases: { name: string; spec: VmiSchedulingSpec; settings?: ScheduleInput['settings']; want: Requests }[] = [
    {
      name: 'memory.guest 1Gi and 2 cores: 200m and guest + overhead',
      spec: { domain: { cpu: { cores: 2 }, memory: { guest: '1Gi' } } },
      want: { cpuMillis: 200, memoryBytes: Gi + overhead(Gi, 2) },
    },
    { name: 'no cpu topology: one vCPU, 100m', spec: spec(), want: { cpuMillis: 100, memoryBytes: Gi + overhead(Gi) } },
    {
      name: 'sockets * cores * threads',
      spec: { domain: { cpu: { sockets: 2, cores: 2, threads: 2 }, memory: { guest: '1Gi' } } },
      want: { cpuMillis: 800, memoryBytes: Gi + overhead(Gi, 8) },
    },
    {
      name: 'explicit requests win over topology and guest',
      spec: { domain: { cpu: { cores: 8 }, memory: { guest: '1Gi' }, resources: { requests: { cpu: '500m', memory: '2Gi' } } } },
      settings: { memoryOvercommitPercent: 200 },
      want: { cpuMillis: 500, memoryBytes: 2 * Gi + overhead(Gi, 8) },
    },
    {
      name: 'requests.memory alone is also the guest size',
      spec: { domain: { resources: { requests: { memory: '512Mi', cpu: '2' } } } },
      want: { cpuMillis: 2000, memoryBytes: 512 * Mi + overhead(512 * Mi) },
    },
    {
      name: 'milli-cpu requests round without float noise',
      spec: { domain: { memory: { guest: '1Gi' }, resources: { requests: { cpu: '300m' } } } },
      want: { cpuMillis: 300, memoryBytes: Gi + overhead(Gi) },
    },
    {
      name: 'memoryOvercommitPercent 150: request = guest * 100 / 150',
      spec: { domain: { memory: { guest: '3Gi' } } },
      settings: { memoryOvercommitPercent: 150 },
      want: { cpuMillis: 100, memoryBytes: 2 * Gi + overhead(3 * Gi) },
    },
    {
      name: 'cpuAllocationRatio 1: a whole CPU per vCPU',
      spec: { domain: { cpu: { cores: 2 }, memory: { guest: '1Gi' } } },
      settings: { cpuAllocationRatio: 1 },
      want: { cpuMillis: 2000, memoryBytes: Gi + overhead(Gi, 2) },
    },
    {
      name: 'cpuAllocationRatio 3 rounds up like MilliValue',
      spec: spec(),
      settings: { cpuAllocationRatio: 3 },
      want: { cpuMillis: 334, memoryBytes: Gi + overhead(Gi) },
    },
    {
      name: 'non-positive settings fall back to the defaults',
      spec: spec(),
      settings: { cpuAllocationRatio: 0, memoryOvercommitPercent: -5 },
      want: { cpuMillis: 100, memoryBytes: Gi + overhead(Gi) },
    },
    {
      name: 'dedicatedCpuPlacement: whole CPUs, ratio ignored',
      spec: { domain: { cpu: { cores: 4, dedicatedCpuPlacement: true }, memory: { guest: '1Gi' } } },
      settings: { cpuAllocationRatio: 10 },
      want: { cpuMillis: 4000, memoryBytes: Gi + overhead(Gi, 4), extended: { 'vessel.io/dedicated-cpus': 4 } },
    },
    {
      name: 'isolateEmulatorThread adds one dedicated CPU',
      spec: { domain: { cpu: { cores: 2, dedicatedCpuPlacement: true, isolateEmulatorThread: true }, memory: { guest: '1Gi' } } },
      want: { cpuMillis: 3000, memoryBytes: Gi + overhead(Gi, 2), extended: { 'vessel.io/dedicated-cpus': 3 } },
    },
    {
      name: 'hugepages: the guest from the hugepage pool, only the overhead from memory',
      spec: { domain: { memory: { guest: '1Gi', hugepages: { pageSize: '2Mi' } } } },
      want: { cpuMillis: 100, memoryBytes: overhead(Gi), extended: { 'hugepages-2Mi': Gi } },
    },
    {
      name: 'overcommitGuestOverhead leaves the overhead out',
      spec: { domain: { memory: { guest: '1Gi' }, resources: { overcommitGuestOverhead: true } } },
      want: { cpuMillis: 100, memoryBytes: Gi },
    },
    {
      name: 'limits.memory stands in for the guest size',
      spec: { domain: { resources: { limits: { memory: '2Gi' } } } },
      settings: { memoryOvercommitPercent: 200 },
      want: { cpuMillis: 100, memoryBytes: Gi + overhead(2 * Gi) },
    },
    {
      name: 'malformed quantities count as absent',
      spec: { domain: { memory: { guest: '1Gi' }, resources: { requests: { cpu: 'lots', memory: '1 GB' } } } },
      want: { cpuMillis: 100, memoryBytes: Gi + overhead(Gi) },
    },
    { name: 'no memory at all: only the fixed overhead', spec: {}, want: { cpuMillis: 100, memoryBytes: overhead(0) } },
  ];
  for (const c of cases) it(c.name, () => assert.deepEqual(vmiRequests(c.spec, c.settings), c.want));

  it('defaults its settings argument', () => {
    assert.deepEqual(vmiRequests(spec()), vmiRequests(spec(), {}));
  });
});

describe('filters', () => {
  const notReadyTaint = 'node(s) had untolerated taint {node.kubernetes.io/not-ready: }';
  const unreachableTaint = 'node(s) had untolerated taint {node.kubernetes.io/unreachable: }';
  const affinity = "node(s) didn't match Pod's node affinity/selector";
  const cases: { name: string; nodes: NodeLike[]; spec?: VmiSchedulingSpec; more?: Partial<ScheduleInput>; want: string }[] = [
    { name: 'Ready=False: the not-ready taint', nodes: [node('a', { ready: 'False' })], want: one(notReadyTaint) },
    { name: 'Ready=Unknown: the unreachable taint', nodes: [node('a', { ready: 'Unknown' })], want: one(unreachableTaint) },
    { name: 'no Ready condition: unreachable', nodes: [node('a', { ready: null })], want: one(unreachableTaint) },
    { name: 'spec.unschedulable', nodes: [node('a', { unschedulable: true })], want: one('node(s) were unschedulable') },
    { name: 'kubevirt.io/schedulable=false', nodes: [node('a', { labels: { 'kubevirt.io/schedulable': 'false' } })], want: one(affinity) },
    { name: 'requiredNodes excludes the node', nodes: [node('a')], more: { requiredNodes: ['b'] }, want: one('node(s) had volume node affinity conflict') },
    {
      name: 'requiredNodes empty: conflicting pins, nothing fits',
      nodes: [node('a'), node('b')],
      more: { requiredNodes: [] },
      want: '0/2 nodes are available: 2 node(s) had volume node affinity conflict.',
    },
    { name: 'nodeSelector mismatch', nodes: [node('a', { labels: { zone: 'x' } })], spec: spec({ nodeSelector: { zone: 'y' } }), want: one(affinity) },
    { name: 'nodeSelector key absent', nodes: [node('a', { labels: {} })], spec: spec({ nodeSelector: { gpu: '' } }), want: one(affinity) },
    {
      name: 'required node affinity mismatch',
      nodes: [node('a', { labels: { zone: 'x' } })],
      spec: spec({
        affinity: {
          nodeAffinity: {
            requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: 'zone', operator: 'In', values: ['y'] }] }] },
          },
        },
      }),
      want: one(affinity),
    },
    {
      name: 'required affinity with no terms matches nothing',
      nodes: [node('a')],
      spec: spec({ affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [] } } } }),
      want: one(affinity),
    },
    {
      name: 'NoSchedule taint',
      nodes: [node('a', { taints: [{ key: 'dedicated', value: 'db', effect: 'NoSchedule' }] })],
      want: one('node(s) had untolerated taint {dedicated: db}'),
    },
    {
      name: 'NoExecute taint, reported with an empty value',
      nodes: [node('a', { taints: [{ key: 'node-role.kubernetes.io/control-plane', effect: 'NoExecute' }] })],
      want: one('node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }'),
    },
    {
      name: 'first untolerated taint is the one reported',
      nodes: [
        node('a', {
          taints: [
            { key: 'ok', effect: 'NoSchedule' },
            { key: 'first', value: '1', effect: 'NoSchedule' },
            { key: 'second', effect: 'NoSchedule' },
          ],
        }),
      ],
      spec: spec({ tolerations: [{ key: 'ok', operator: 'Exists' }] }),
      want: one('node(s) had untolerated taint {first: 1}'),
    },
    { name: 'Insufficient cpu', nodes: [node('a', { cpu: '50m' })], want: one('Insufficient cpu') },
    { name: 'Insufficient memory', nodes: [node('a', { memory: '1Gi' })], want: one('Insufficient memory') },
    {
      name: 'no allocatable reported: insufficient',
      nodes: [{ metadata: { name: 'a' }, status: { conditions: [{ type: 'Ready', status: 'True' }] } }],
      want: one('Insufficient cpu'),
    },
    {
      name: 'placed requests use up the node',
      nodes: [node('a', { cpu: '1', memory: '4Gi' })],
      more: {
        placed: [
          { nodeName: 'a', requests: { cpuMillis: 500, memoryBytes: 3 * Gi } },
          { nodeName: 'a', requests: { cpuMillis: 100, memoryBytes: 512 * Mi } },
        ],
      },
      want: one('Insufficient memory'),
    },
    {
      name: 'only the first failing filter counts (unschedulable and too small)',
      nodes: [node('a', { unschedulable: true, memory: '1Mi', ready: 'True' })],
      want: one('node(s) were unschedulable'),
    },
    {
      name: 'readiness is checked before everything else',
      nodes: [node('a', { ready: 'False', unschedulable: true, labels: { 'kubevirt.io/schedulable': 'false' }, cpu: '0' })],
      more: { requiredNodes: [] },
      want: one(notReadyTaint),
    },
    {
      name: 'volume pins are checked before selectors and taints',
      nodes: [node('a', { labels: {}, taints: [{ key: 'k', effect: 'NoSchedule' }] })],
      spec: spec({ nodeSelector: { zone: 'x' } }),
      more: { requiredNodes: ['b'] },
      want: one('node(s) had volume node affinity conflict'),
    },
    {
      name: 'selectors are checked before taints, taints before resources',
      nodes: [
        node('a', { labels: {}, taints: [{ key: 'k', effect: 'NoSchedule' }], memory: '1Mi' }),
        node('b', { labels: { zone: 'x' }, taints: [{ key: 'k', effect: 'NoSchedule' }], memory: '1Mi' }),
      ],
      spec: spec({ nodeSelector: { zone: 'x' } }),
      want: "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {k: }.",
    },
  ];
  for (const c of cases) it(c.name, () => assert.equal(msg(run(c.nodes, c.spec, c.more)), c.want));

  const fits: { name: string; nodes: NodeLike[]; spec?: VmiSchedulingSpec; more?: Partial<ScheduleInput> }[] = [
    {
      name: 'a not-ready toleration admits a not-ready node',
      nodes: [node('a', { ready: 'False' })],
      spec: spec({ tolerations: [{ key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoSchedule' }] }),
    },
    {
      name: 'an unschedulable toleration admits a cordoned node',
      nodes: [node('a', { unschedulable: true })],
      spec: spec({ tolerations: [{ key: 'node.kubernetes.io/unschedulable', operator: 'Exists', effect: 'NoSchedule' }] }),
    },
    { name: 'kubevirt.io/schedulable=true', nodes: [node('a', { labels: { 'kubevirt.io/schedulable': 'true' } })] },
    { name: 'requiredNodes includes the node', nodes: [node('a')], more: { requiredNodes: ['a', 'c'] } },
    { name: 'PreferNoSchedule taints never filter', nodes: [node('a', { taints: [{ key: 'k', effect: 'PreferNoSchedule' }] })] },
    {
      name: 'tolerated NoExecute taint',
      nodes: [node('a', { taints: [{ key: 'dedicated', value: 'vm', effect: 'NoExecute' }] })],
      spec: spec({ tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'vm', effect: 'NoExecute', tolerationSeconds: 5 }] }),
    },
    {
      name: 'exactly the free capacity fits',
      nodes: [node('a', { cpu: '100m', memory: String(Gi + overhead(Gi)) })],
    },
    {
      name: 'placed on other or unknown nodes does not count',
      nodes: [node('a', { cpu: '100m', memory: String(Gi + overhead(Gi)) })],
      more: { placed: [{ nodeName: 'ghost', requests: { cpuMillis: 1e6, memoryBytes: 1e15 } }] },
    },
    {
      name: 'overcommit lets a bigger guest fit',
      nodes: [node('a', { memory: String(Gi + overhead(2 * Gi)) })],
      spec: { domain: { memory: { guest: '2Gi' } } },
      more: { settings: { memoryOvercommitPercent: 200 } },
    },
  ];
  for (const c of fits) it(`fits: ${c.name}`, () => assert.equal(run(c.nodes, c.spec, c.more).node, 'a'));

  it('without overcommit the same guest does not fit', () => {
    assert.equal(msg(run([node('a', { memory: String(Gi + overhead(2 * Gi)) })], { domain: { memory: { guest: '2Gi' } } })), one('Insufficient memory'));
  });

  it('cpuAllocationRatio decides whether vCPUs fit', () => {
    const s: VmiSchedulingSpec = { domain: { cpu: { cores: 4 }, memory: { guest: '1Gi' } } };
    assert.equal(run([node('a', { cpu: '2' })], s).node, 'a'); // 400m at ratio 10
    assert.equal(msg(run([node('a', { cpu: '2' })], s, { settings: { cpuAllocationRatio: 1 } })), one('Insufficient cpu'));
  });
});

describe('unschedulable message', () => {
  it("reads like kube-scheduler's, with mixed reasons", () => {
    const r = run(
      [node('a', { labels: { zone: 'x' } }), node('b', { memory: '512Mi', labels: { zone: 'y' } }), node('c', { labels: {} })],
      spec({ nodeSelector: { zone: 'y' } }),
    );
    assert.deepEqual(r, {
      node: undefined,
      reason: 'Unschedulable',
      message: "0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match Pod's node affinity/selector.",
    });
  });

  it('sorts entries as strings, like Go sort.Strings', () => {
    const nodes = [
      ...Array.from({ length: 10 }, (_, i) => node(`u${i}`, { unschedulable: true })),
      node('m1', { memory: '1Mi' }),
      node('m2', { memory: '1Mi' }),
    ];
    assert.equal(msg(run(nodes)), '0/12 nodes are available: 10 node(s) were unschedulable, 2 Insufficient memory.');
  });

  it('counts distinct taints separately', () => {
    const r = run([
      node('a', { taints: [{ key: 'x', value: '1', effect: 'NoSchedule' }] }),
      node('b', { taints: [{ key: 'x', value: '1', effect: 'NoSchedule' }] }),
      node('c', { taints: [{ key: 'y', effect: 'NoExecute' }] }),
    ]);
    assert.equal(msg(r), '0/3 nodes are available: 1 node(s) had untolerated taint {y: }, 2 node(s) had untolerated taint {x: 1}.');
  });

  it('no nodes at all', () => {
    assert.deepEqual(run([]), { node: undefined, reason: 'Unschedulable', message: 'no nodes available to schedule pods' });
  });

  it('describeUnschedulable takes a Map or a record and drops zero counts', () => {
    assert.equal(describeUnschedulable(3, new Map([['Insufficient cpu', 3]])), '0/3 nodes are available: 3 Insufficient cpu.');
    assert.equal(
      describeUnschedulable(2, { 'Insufficient memory': 1, 'Insufficient cpu': 1, nope: 0 }),
      '0/2 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.',
    );
  });
});

describe('node selector terms', () => {
  const n = node('node-1', { labels: { zone: 'a', gen: '5', tier: '' } });
  const expr = (key: string, operator: string, values?: string[]): NodeSelectorTermLike => ({
    matchExpressions: [{ key, operator, values } as NonNullable<NodeSelectorTermLike['matchExpressions']>[number]],
  });
  const field = (operator: string, values: string[], key = 'metadata.name'): NodeSelectorTermLike => ({
    matchFields: [{ key, operator, values } as NonNullable<NodeSelectorTermLike['matchFields']>[number]],
  });
  const cases: [string, NodeSelectorTermLike, boolean][] = [
    ['In matches', expr('zone', 'In', ['b', 'a']), true],
    ['In misses', expr('zone', 'In', ['b']), false],
    ['In on an absent key', expr('rack', 'In', ['a']), false],
    ['In with an empty value', expr('tier', 'In', ['']), true],
    ['NotIn matches other values', expr('zone', 'NotIn', ['b']), true],
    ['NotIn misses listed values', expr('zone', 'NotIn', ['a']), false],
    ['NotIn matches an absent key', expr('rack', 'NotIn', ['a']), true],
    ['Exists', expr('tier', 'Exists'), true],
    ['Exists on an absent key', expr('rack', 'Exists'), false],
    ['DoesNotExist', expr('rack', 'DoesNotExist'), true],
    ['DoesNotExist on a present key', expr('zone', 'DoesNotExist'), false],
    ['Gt true', expr('gen', 'Gt', ['4']), true],
    ['Gt equal is false', expr('gen', 'Gt', ['5']), false],
    ['Lt true', expr('gen', 'Lt', ['10']), true],
    ['Lt compares numbers, not strings', expr('gen', 'Lt', ['40']), true],
    ['Lt false', expr('gen', 'Lt', ['5']), false],
    ['Gt with a negative bound', expr('gen', 'Gt', ['-1']), true],
    ['Gt on a non-integer label', expr('zone', 'Gt', ['1']), false],
    ['Gt with a non-integer value', expr('gen', 'Gt', ['4.5']), false],
    ['Gt needs exactly one value', expr('gen', 'Gt', ['1', '2']), false],
    ['Gt on an absent key', expr('rack', 'Gt', ['1']), false],
    ['Gt beyond int64 is no match', expr('gen', 'Lt', ['9223372036854775808']), false],
    ['unknown operator', expr('zone', 'Like', ['a']), false],
    ['matchFields In metadata.name', field('In', ['node-1']), true],
    ['matchFields In another name', field('In', ['node-2']), false],
    ['matchFields NotIn', field('NotIn', ['node-2']), true],
    ['matchFields NotIn own name', field('NotIn', ['node-1']), false],
    ['matchFields on another field', field('In', ['node-1'], 'metadata.uid'), false],
    ['matchFields with Exists is unsupported', field('Exists', []), false],
    ['empty term matches nothing', {}, false],
    [
      'expressions and fields are ANDed',
      {
        matchExpressions: [
          { key: 'zone', operator: 'In', values: ['a'] },
          { key: 'gen', operator: 'Gt', values: ['9'] },
        ],
      },
      false,
    ],
    [
      'expressions and fields together',
      { matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }], matchFields: [{ key: 'metadata.name', operator: 'In', values: ['node-1'] }] },
      true,
    ],
  ];
  for (const [name, term, want] of cases) it(name, () => assert.equal(matchesNodeSelectorTerm(term, n), want));

  it('terms are ORed in required affinity', () => {
    const s = spec({
      affinity: {
        nodeAffinity: {
          requiredDuringSchedulingIgnoredDuringExecution: {
            nodeSelectorTerms: [
              { matchExpressions: [{ key: 'zone', operator: 'In', values: ['nope'] }] },
              { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['b'] }] },
            ],
          },
        },
      },
    });
    const r = run([node('a'), node('b')], s);
    assert.equal(r.node, 'b');
  });

  it('nodeSelector and affinity must both hold', () => {
    const s = spec({
      nodeSelector: { zone: 'x' },
      affinity: {
        nodeAffinity: {
          requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchFields: [{ key: 'metadata.name', operator: 'In', values: ['a'] }] }] },
        },
      },
    });
    const nodes = [node('a', { labels: { zone: 'y' } }), node('b', { labels: { zone: 'x' } }), node('c', { labels: { zone: 'x' } })];
    assert.equal(msg(run(nodes, s)), "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.");
    assert.equal(run([...nodes, node('a2', { labels: { zone: 'x' } })], { ...s, affinity: undefined }).node, 'a2');
  });
});

describe('tolerations', () => {
  const taint: TaintLike = { key: 'dedicated', value: 'db', effect: 'NoSchedule' };
  const cases: [string, TolerationLike, TaintLike, boolean][] = [
    ['Equal with the same value', { key: 'dedicated', operator: 'Equal', value: 'db' }, taint, true],
    ['operator defaults to Equal', { key: 'dedicated', value: 'db' }, taint, true],
    ['Equal with another value', { key: 'dedicated', operator: 'Equal', value: 'web' }, taint, false],
    ['Equal without a value vs a valued taint', { key: 'dedicated', operator: 'Equal' }, taint, false],
    ['Equal without a value vs an empty taint value', { key: 'k', operator: 'Equal' }, { key: 'k', effect: 'NoSchedule' }, true],
    ['Exists ignores the value', { key: 'dedicated', operator: 'Exists' }, taint, true],
    ['another key', { key: 'other', operator: 'Exists' }, taint, false],
    ['empty key with Exists tolerates everything', { operator: 'Exists' }, taint, true],
    ['empty key with Exists, NoExecute too', { operator: 'Exists' }, { key: 'x', effect: 'NoExecute' }, true],
    ['empty key with Exists but another effect', { operator: 'Exists', effect: 'NoExecute' }, taint, false],
    ['empty key with Equal is invalid, tolerates nothing', { operator: 'Equal', value: 'db' }, taint, false],
    ['matching effect', { key: 'dedicated', operator: 'Exists', effect: 'NoSchedule' }, taint, true],
    ['other effect', { key: 'dedicated', operator: 'Exists', effect: 'NoExecute' }, taint, false],
    ['empty effect matches all effects', { key: 'dedicated', operator: 'Exists' }, { ...taint, effect: 'NoExecute' }, true],
    ['PreferNoSchedule toleration does not cover NoSchedule', { key: 'dedicated', operator: 'Exists', effect: 'PreferNoSchedule' }, taint, false],
  ];
  for (const [name, t, tt, want] of cases) it(name, () => assert.equal(toleratesTaint(t, tt), want));

  it('every untolerated taint must be tolerated for the node to fit', () => {
    const n = node('a', {
      taints: [
        { key: 'a', effect: 'NoSchedule' },
        { key: 'b', value: '1', effect: 'NoExecute' },
      ],
    });
    const partial = spec({ tolerations: [{ key: 'a', operator: 'Exists' }] });
    assert.equal(msg(run([n], partial)), one('node(s) had untolerated taint {b: 1}'));
    const full = spec({
      tolerations: [
        { key: 'a', operator: 'Exists' },
        { key: 'b', value: '1' },
      ],
    });
    assert.equal(run([n], full).node, 'a');
  });
});

describe('scoring', () => {
  it('least allocated: the emptier node wins', () => {
    const r = run([node('a'), node('b')], spec(), { placed: [{ nodeName: 'a', requests: { cpuMillis: 2000, memoryBytes: 4 * Gi } }] });
    assert.equal(r.node, 'b');
  });

  it('least allocated weighs cpu and memory alike', () => {
    // After placement (100m, 1Gi, no overhead) on 4 CPUs / 8Gi: a is 22.5% cpu free and 87.5%
    // memory free (mean 55), b 97.5% and 62.5% (mean 80). Memory alone would pick a.
    const placed = [
      { nodeName: 'a', requests: { cpuMillis: 3000, memoryBytes: 0 } },
      { nodeName: 'b', requests: { cpuMillis: 0, memoryBytes: 2 * Gi } },
    ];
    const s = spec({ domain: { memory: { guest: '1Gi' }, resources: { overcommitGuestOverhead: true } } });
    assert.deepEqual(run([node('a'), node('b')], s, { placed }), { node: 'b', score: 80 });
  });

  it('preferred node affinity wins over least allocated', () => {
    const s = spec({
      affinity: {
        nodeAffinity: {
          preferredDuringSchedulingIgnoredDuringExecution: [
            { weight: 10, preference: { matchExpressions: [{ key: 'disk', operator: 'In', values: ['ssd'] }] } },
          ],
        },
      },
    });
    const nodes = [node('busy', { labels: { disk: 'ssd' } }), node('idle', { labels: { disk: 'hdd' } })];
    const placed = [{ nodeName: 'busy', requests: { cpuMillis: 3000, memoryBytes: 6 * Gi } }];
    const r = run(nodes, s, { placed });
    assert.equal(r.node, 'busy');
    assert.ok(r.node !== undefined && r.score >= 10_000 && r.score < 10_100, `score ${r.node !== undefined ? r.score : ''}`);
  });

  it('sums the weights of matching preferred terms', () => {
    const pref = (weight: number, key: string) => ({ weight, preference: { matchExpressions: [{ key, operator: 'Exists' as const }] } });
    const s = spec({ affinity: { nodeAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [pref(30, 'x'), pref(30, 'y'), pref(50, 'z')] } } });
    const r = run([node('z', { labels: { z: '' } }), node('xy', { labels: { x: '', y: '' } })], s);
    assert.equal(r.node, 'xy');
  });

  it('preferred terms never make a node fit', () => {
    const s = spec({
      nodeSelector: { zone: 'a' },
      affinity: {
        nodeAffinity: {
          preferredDuringSchedulingIgnoredDuringExecution: [
            { weight: 100, preference: { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['b'] }] } },
          ],
        },
      },
    });
    assert.equal(run([node('a', { labels: { zone: 'a' } }), node('b', { labels: { zone: 'b' } })], s).node, 'a');
  });

  it('ties go to the alphabetically first node, whatever the input order', () => {
    assert.equal(run([node('c'), node('a'), node('b')]).node, 'a');
    assert.equal(run([node('b'), node('c'), node('a')]).node, 'a');
  });

  it('reports the LeastAllocated score of the winner', () => {
    // 100m of 1 CPU and 1Gi of 4Gi (no overhead): (90 + 75) / 2.
    const r = run([node('a', { cpu: '1', memory: '4Gi' })], spec({ domain: { memory: { guest: '1Gi' }, resources: { overcommitGuestOverhead: true } } }));
    assert.deepEqual(r, { node: 'a', score: 82.5 });
  });

  it('skips failing nodes and schedules on the one that fits', () => {
    const nodes = [node('a', { ready: 'False' }), node('b', { memory: '1Gi' }), node('c', { unschedulable: true }), node('d')];
    assert.equal(run(nodes).node, 'd');
  });
});

describe('dedicated CPUs and hugepages', () => {
  const pinned = { domain: { cpu: { cores: 1, dedicatedCpuPlacement: true }, memory: { guest: '128Mi' } } };
  const cpuManager = (name: string, dedicated: string, extra: Record<string, string> = {}): NodeLike => {
    const n = node(name, { labels: { 'kubernetes.io/hostname': name, cpumanager: 'true' } });
    Object.assign(n.status!.allocatable!, { 'vessel.io/dedicated-cpus': dedicated, ...extra });
    return n;
  };
  const vmi = (spec: VmiSchedulingSpec) => ({ metadata: { name: 'v', namespace: 'ns' }, spec });

  it('a dedicated VMI needs a node with a CPU manager', () => {
    const r = scheduleVmi({ vmi: vmi(pinned), nodes: [node('plain')], placed: [] });
    assert.equal(r.node, undefined);
    assert.match((r as { message: string }).message, /^0\/1 nodes are available: 1 node\(s\) didn't match Pod's node affinity\/selector \(cpumanager=true/);
    assert.equal(scheduleVmi({ vmi: vmi(pinned), nodes: [node('plain'), cpuManager('cm', '1')], placed: [] }).node, 'cm');
  });

  it('exclusive CPUs are counted from the dedicated VMIs already there', () => {
    const placed = [{ nodeName: 'cm', requests: vmiRequests(pinned) }];
    const r = scheduleVmi({ vmi: vmi(pinned), nodes: [cpuManager('cm', '1')], placed });
    assert.deepEqual(r, { node: undefined, reason: 'Unschedulable', message: '0/1 nodes are available: 1 Insufficient vessel.io/dedicated-cpus.' });
    assert.equal(scheduleVmi({ vmi: vmi(pinned), nodes: [cpuManager('cm', '2')], placed }).node, 'cm');
    // A shared VMI does not use the exclusive pool.
    assert.equal(scheduleVmi({ vmi: vmi({ domain: { memory: { guest: '128Mi' } } }), nodes: [cpuManager('cm', '1')], placed }).node, 'cm');
    const isolated = { domain: { cpu: { cores: 1, dedicatedCpuPlacement: true, isolateEmulatorThread: true }, memory: { guest: '128Mi' } } };
    assert.equal(scheduleVmi({ vmi: vmi(isolated), nodes: [cpuManager('cm', '1')], placed: [] }).node, undefined, 'two CPUs on a pool of one');
  });

  it('a VMI migrating into a node holds its dedicated CPUs and memory there until the switch', () => {
    const migrating = (ms: Record<string, unknown>, nodeName = 'src', phase = 'Running') => ({
      metadata: { uid: 'u1' },
      spec: pinned,
      status: { phase, nodeName, migrationState: { migrationUid: 'm1', sourceNode: 'src', targetNode: 'cm', ...ms } },
    });
    const targets = (v: ReturnType<typeof migrating>) => migrationTargetPlacements([v]);
    // Named as the target (Scheduled) and every step after it: counted on the target.
    for (const step of [{}, { targetPod: 'v@cm' }, { targetNodeAddress: '10.0.0.2:4000' }, { startTimestamp: 't' }])
      assert.deepEqual(targets(migrating(step)), [{ nodeName: 'cm', requests: vmiRequests(pinned) }], JSON.stringify(step));
    // Switched (its node is the target: counted as placed there), completed, failed, or the VMI ended: nothing more.
    assert.deepEqual(targets(migrating({}, 'cm')), []);
    assert.deepEqual(targets(migrating({ completed: true })), []);
    assert.deepEqual(targets(migrating({ failed: true })), []);
    assert.deepEqual(targets(migrating({}, 'src', 'Failed')), []);
    assert.deepEqual(migrationTargetPlacements([{ metadata: {}, spec: pinned, status: { phase: 'Running', nodeName: 'src' } }]), []);
    // A second dedicated VMI does not fit a pool of one the first is migrating into.
    const placed = [{ nodeName: 'src', requests: vmiRequests(pinned) }, ...targets(migrating({ targetPod: 'v@cm' }))];
    const r = scheduleVmi({ vmi: vmi(pinned), nodes: [cpuManager('cm', '1')], placed });
    assert.deepEqual(r, { node: undefined, reason: 'Unschedulable', message: '0/1 nodes are available: 1 Insufficient vessel.io/dedicated-cpus.' });
    // Its memory counts there too.
    const big = { domain: { memory: { guest: '5Gi' } } };
    const bigTarget = migrationTargetPlacements([{ ...migrating({}), spec: big }]);
    assert.equal(scheduleVmi({ vmi: vmi(big), nodes: [node('cm')], placed: [] }).node, 'cm');
    assert.match((scheduleVmi({ vmi: vmi(big), nodes: [node('cm')], placed: bigTarget }) as { message: string }).message, /1 Insufficient memory/);
  });

  it("hugepages are counted against the node's pool of that size", () => {
    const hp = { domain: { memory: { guest: '128Mi', hugepages: { pageSize: '2Mi' } } } };
    const r = scheduleVmi({ vmi: vmi(hp), nodes: [node('a')], placed: [] });
    assert.match((r as { message: string }).message, /1 Insufficient hugepages-2Mi/);
    const n = node('a');
    n.status!.allocatable!['hugepages-2Mi'] = '256Mi';
    assert.equal(scheduleVmi({ vmi: vmi(hp), nodes: [n], placed: [] }).node, 'a');
    const placed = [{ nodeName: 'a', requests: vmiRequests(hp) }];
    assert.equal(scheduleVmi({ vmi: vmi(hp), nodes: [n], placed }).node, 'a');
    placed.push({ nodeName: 'a', requests: vmiRequests(hp) });
    assert.match((scheduleVmi({ vmi: vmi(hp), nodes: [n], placed }) as { message: string }).message, /1 Insufficient hugepages-2Mi/);
  });
});
