/**
 * NetworkPolicy through an unmodified kubectl (a real server, no agent): apply, the table's
 * columns, defaults, and refusals that name the field. Enforcement is e2e/netpol.e2e.test.ts.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { kubectlFor, KUBECTL_SKIP, startVessel, type Vessel } from './harness.ts';

describe('NetworkPolicy API', { skip: KUBECTL_SKIP }, () => {
  let v: Vessel;
  const { kubectl, ok } = kubectlFor(() => v);
  before(async () => {
    v = await startVessel();
    await ok(['create', 'namespace', 'np-b']);
  });
  after(async () => {
    if (!v) return;
    await kubectl(['delete', 'namespace', 'np-b', '--wait=false']);
    await v.close();
  });

  it('kubectl apply, get netpol (POD-SELECTOR) and the defaults Kubernetes gives', async () => {
    const manifest = [
      'apiVersion: networking.k8s.io/v1',
      'kind: NetworkPolicy',
      'metadata:',
      '  name: web-from-a',
      '  namespace: np-b',
      'spec:',
      '  podSelector:',
      '    matchLabels:',
      '      app: web',
      '  ingress:',
      '  - from:',
      '    - namespaceSelector:',
      '        matchLabels:',
      '          kubernetes.io/metadata.name: a',
      '    ports:',
      '    - port: 80',
      '',
    ].join('\n');
    assert.match(await ok(['apply', '-f', '-'], manifest), /networkpolicy.networking.k8s.io\/web-from-a created/);
    assert.match(
      await ok(
        ['-n', 'np-b', 'create', '-f', '-'],
        'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny\nspec:\n  podSelector: {}\n',
      ),
      /created/,
    );
    const table = await ok(['-n', 'np-b', 'get', 'netpol']);
    assert.match(table, /^NAME\s+POD-SELECTOR\s+AGE/m);
    assert.match(table, /^default-deny\s+<none>\s+\d+s/m);
    assert.match(table, /^web-from-a\s+app=web\s+\d+s/m);
    const got = JSON.parse(await ok(['-n', 'np-b', 'get', 'networkpolicy', 'web-from-a', '-o', 'json'])) as {
      spec: { policyTypes: string[]; ingress: { ports: { protocol: string }[] }[] };
    };
    assert.deepEqual(got.spec.policyTypes, ['Ingress']);
    assert.equal(got.spec.ingress[0].ports[0].protocol, 'TCP');
  });

  it('refuses a bad policy type, port, ipBlock or selector, naming the field, and stores nothing', async () => {
    const bad = (name: string, spec: string) =>
      kubectl(['-n', 'np-b', 'create', '-f', '-'], `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: ${name}\nspec:\n${spec}`);
    const cases: [string, string, RegExp][] = [
      ['types', '  podSelector: {}\n  policyTypes: [Sideways]\n', /spec\.policyTypes\[0\]: Unsupported value: "Sideways"/],
      [
        'proto',
        '  podSelector: {}\n  ingress:\n  - ports:\n    - protocol: ICMP\n      port: 80\n',
        /spec\.ingress\[0\]\.ports\[0\]\.protocol: Unsupported value: "ICMP"/,
      ],
      ['range', '  podSelector: {}\n  ingress:\n  - ports:\n    - port: 9000\n      endPort: 8000\n', /spec\.ingress\[0\]\.ports\[0\]\.endPort/],
      [
        'except',
        '  podSelector: {}\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 10.0.0.0/16\n        except: [10.1.0.0/24]\n',
        /spec\.egress\[0\]\.to\[0\]\.ipBlock\.except\[0\].*strict subset/,
      ],
      ['label', '  podSelector:\n    matchLabels:\n      app: "bad value!"\n', /spec\.podSelector\.matchLabels/],
    ];
    for (const [name, spec, field] of cases) {
      const r = await bad(name, spec);
      assert.notEqual(r.code, 0, name);
      assert.match(r.err, field, name);
    }
    const names = await ok(['-n', 'np-b', 'get', 'netpol', '-o', 'name']);
    assert.doesNotMatch(names, /types|proto|range|except|label/);
  });
});
