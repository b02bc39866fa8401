/** NetworkPolicy's ruleset builder: what each isolated NIC lets through, without nft. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { netpol } from '@vessel/api';
import { policyNodesOf, policyRuleset, policyVmOf, type PolicyInput, type PolicyObject, type PolicyVm } from './policy.ts';
import { tapName } from './taps.ts';

const vm = (namespace: string, name: string, ip: string, labels: Record<string, string> = {}): PolicyVm => ({ namespace, name, ip, labels });
const pol = (namespace: string, name: string, spec: netpol.NetworkPolicySpec): PolicyObject => ({ namespace, name, spec });

function input(
  local: PolicyVm[],
  all: PolicyVm[],
  policies: PolicyObject[],
  nsLabels: Record<string, Record<string, string>> = {},
  conntrack = true,
): PolicyInput {
  return {
    local,
    policiesIn: (ns) => policies.filter((p) => p.namespace === ns),
    vmsIn: (ns) => all.filter((v) => v.namespace === ns),
    namespaces: () => [...new Set(all.map((v) => v.namespace))].map((name) => ({ name, labels: nsLabels[name] ?? {} })),
    nodeAddress: '10.244.0.9',
    conntrack,
  };
}

/** The body of a NIC's chain, one rule a line, or undefined when the NIC is open that way. */
function chain(text: string, dir: 'in' | 'out', v: PolicyVm): string[] | undefined {
  const m = new RegExp(`chain ${dir}_${tapName(v.namespace, v.name)} \\{\\n([^}]*(?:\\}[^\\n]*\\n[^}]*)*?)\\n  \\}`).exec(text);
  return m?.[1].split('\n').map((l) => l.trim());
}

const a1 = vm('a', 'client', '10.244.1.1', { app: 'client' });
const a2 = vm('a', 'other', '10.244.1.2', { app: 'other' });
const b1 = vm('b', 'web', '10.244.2.1', { app: 'web' });
const all = [a1, a2, b1];

test('no policy: every NIC is open, the table exists and holds no per-NIC chain', () => {
  const t = policyRuleset(input([a1, b1], all, []));
  assert.match(t, /^table bridge vessel_policy\ndelete table bridge vessel_policy\ntable bridge vessel_policy \{/);
  assert.doesNotMatch(t, /vmap|chain (in|out)_/);
  assert.match(t, /chain output \{\n.*\n {4}ip saddr 10\.244\.0\.9 accept/);
});

test("default-deny ingress in b isolates b's VM for ingress only; the NIC keeps ARP, DHCP and answers", () => {
  const t = policyRuleset(input([a1, b1], all, [pol('b', 'deny', { podSelector: {}, policyTypes: ['Ingress'] })]));
  assert.deepEqual(chain(t, 'in', b1), [
    'ether type arp return',
    'udp sport { 67, 68 } udp dport { 67, 68 } return',
    'ct state established,related return',
    'drop comment "b/web: isolated for Ingress"',
  ]);
  assert.equal(chain(t, 'out', b1), undefined, 'egress stays open');
  assert.equal(chain(t, 'in', a1), undefined, 'a is not selected');
  assert.match(t, new RegExp(`oifname vmap \\{ "${tapName('b', 'web')}" : jump in_${tapName('b', 'web')} \\}`));
});

test("an allow rule from namespace a for port 80 opens exactly TCP 80 from a's VMs", () => {
  const t = policyRuleset(
    input([b1], all, [
      pol('b', 'deny', { podSelector: {} }),
      pol('b', 'web-from-a', {
        podSelector: { matchLabels: { app: 'web' } },
        ingress: [{ from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'a' } } }], ports: [{ protocol: 'TCP', port: 80 }] }],
      }),
    ]),
  );
  const rules = chain(t, 'in', b1)!;
  assert.ok(rules.includes('ip saddr { 10.244.1.1, 10.244.1.2 } meta l4proto tcp th dport { 80 } return comment "b/web-from-a"'), rules.join('\n'));
  assert.equal(rules.at(-1), 'drop comment "b/web: isolated for Ingress"');
});

test("peers: podSelector in the policy's namespace, namespaceSelector by labels, both combined, ipBlock with except", () => {
  const b2 = vm('b', 'db', '10.244.2.2', { app: 'db' });
  const everyone = [...all, b2];
  const peersOf = (from: netpol.NetworkPolicyPeer[]) =>
    chain(
      policyRuleset(input([b2], everyone, [pol('b', 'p', { podSelector: { matchLabels: { app: 'db' } }, ingress: [{ from }] })], { a: { team: 'x' } })),
      'in',
      b2,
    )!.filter((l) => l.includes('"b/p"'));
  assert.deepEqual(peersOf([{ podSelector: { matchLabels: { app: 'web' } } }]), ['ip saddr { 10.244.2.1 } return comment "b/p"']);
  assert.deepEqual(peersOf([{ namespaceSelector: { matchLabels: { team: 'x' } } }]), ['ip saddr { 10.244.1.1, 10.244.1.2 } return comment "b/p"']);
  assert.deepEqual(
    peersOf([{ namespaceSelector: { matchLabels: { team: 'x' } }, podSelector: { matchExpressions: [{ key: 'app', operator: 'In', values: ['client'] }] } }]),
    ['ip saddr { 10.244.1.1 } return comment "b/p"'],
  );
  assert.deepEqual(peersOf([{ ipBlock: { cidr: '10.244.0.0/16', except: ['10.244.1.0/24'] } }]), [
    'ip saddr 10.244.0.0/16 ip saddr != { 10.244.1.0/24 } return comment "b/p"',
  ]);
  assert.deepEqual(peersOf([{ podSelector: { matchLabels: { app: 'nobody' } } }]), [], 'peers that resolve to nothing allow nothing');
});

test('egress: the NIC reaches the node and the listed destinations only; UDP ranges and ports per protocol', () => {
  const t = policyRuleset(
    input([a1], all, [
      pol('a', 'out', {
        podSelector: { matchLabels: { app: 'client' } },
        policyTypes: ['Egress'],
        egress: [{ to: [{ podSelector: {}, namespaceSelector: {} }], ports: [{ protocol: 'UDP', port: 5000, endPort: 5010 }, { port: 80 }, { port: 'http' }] }],
      }),
    ]),
  );
  const rules = chain(t, 'out', a1)!;
  assert.ok(rules.includes('ip daddr 10.244.0.9 return'));
  assert.ok(rules.includes('ip daddr { 10.244.1.1, 10.244.1.2, 10.244.2.1 } meta l4proto tcp th dport { 80 } return comment "a/out"'), rules.join('\n'));
  assert.ok(rules.includes('ip daddr { 10.244.1.1, 10.244.1.2, 10.244.2.1 } meta l4proto udp th dport { 5000-5010 } return comment "a/out"'));
  assert.equal(chain(t, 'in', a1), undefined, 'policyTypes Egress only leaves ingress open');
  assert.match(t, /chain input \{\n.*\n {4}iifname vmap/);
});

test('an empty rule allows everything; without bridge conntrack answers are recognised statelessly', () => {
  const t = policyRuleset(input([b1], all, [pol('b', 'all', { podSelector: {}, ingress: [{}] })], {}, false));
  const rules = chain(t, 'in', b1)!;
  assert.ok(rules.includes('return comment "b/all"'));
  assert.ok(rules.includes('meta l4proto tcp tcp flags & (syn | ack) != syn return'));
  assert.ok(!rules.some((l) => l.startsWith('ct ')));
  const odd = policyRuleset(input([b1], all, [pol('b', 'odd', { podSelector: {}, ingress: [{ ports: [{ port: 80.5 }, { port: 'http' }] }] })]));
  assert.ok(!chain(odd, 'in', b1)!.some((l) => l.includes('"b/odd"')), 'ports nft cannot take (or names) allow nothing');
});

test("a VMI's address is the one of its pod interface in status.interfaces", () => {
  const vmi = {
    metadata: { name: 'web', namespace: 'b', labels: { app: 'web' } },
    spec: { networks: [{ name: 'nic0', pod: {} }], domain: { devices: { interfaces: [{ name: 'nic0', bridge: {} }] } } },
    status: {
      interfaces: [
        { name: 'other', ipAddress: '10.1.1.1' },
        { name: 'nic0', ipAddress: '10.244.2.1' },
      ],
    },
  };
  assert.deepEqual(policyVmOf(vmi as never), { namespace: 'b', name: 'web', labels: { app: 'web' }, ip: '10.244.2.1' });
});

test("a migrating VMI is the target node's as well (its tap is there before the guest), until the migration fails", () => {
  const vmi = (migrationState?: Record<string, unknown>) =>
    ({ metadata: { name: 'web', namespace: 'b' }, status: { nodeName: 'n0', ...(migrationState ? { migrationState } : {}) } }) as Parameters<
      typeof policyNodesOf
    >[0];
  assert.deepEqual(policyNodesOf(vmi()), ['n0']);
  assert.deepEqual(policyNodesOf(vmi({ migrationUid: 'u', sourceNode: 'n0', targetNode: 'n1' })), ['n0', 'n1']);
  // Completed but the switch write (nodeName) not seen yet: the guest already runs on n1.
  assert.deepEqual(policyNodesOf(vmi({ migrationUid: 'u', sourceNode: 'n0', targetNode: 'n1', completed: true })), ['n0', 'n1']);
  assert.deepEqual(policyNodesOf(vmi({ migrationUid: 'u', sourceNode: 'n0', targetNode: 'n1', failed: true })), ['n0']);
  assert.deepEqual(policyNodesOf(vmi({ migrationUid: 'u', sourceNode: 'n1', targetNode: 'n0', completed: true })), ['n0']);
});
