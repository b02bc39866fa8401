/**
 * `vessel expose` against the real API semantics (in-memory client: Resources over SQLite), so
 * the Service it makes is the one the server stores, ClusterIP and NodePort allocated.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { refs } from '@vessel/api';
import type { KubeObject } from '@vessel/client';
import { InMemoryClient } from '@vessel/apiserver/testing';
import { UsageError } from '../errors.ts';
import { expose } from './expose.ts';

const { SERVICES, VMS, VMIS } = refs;

function vm(name: string, templateLabels?: Record<string, string>): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name, namespace: 'default', labels: { owner: 'me' } },
    spec: {
      runStrategy: 'Halted',
      template: {
        ...(templateLabels ? { metadata: { labels: templateLabels } } : {}),
        spec: { domain: { cpu: { cores: 1 }, resources: { requests: { memory: '128Mi' } }, devices: {} } },
      },
    },
  };
}

async function client(): Promise<InMemoryClient> {
  const c = new InMemoryClient();
  await c.namespaces('default');
  return c;
}

test('expose vm: a Service selecting the template labels, with the port, target port and protocol asked for', async () => {
  const c = await client();
  await c.create(VMS, vm('web', { 'kubevirt.io/domain': 'web', tier: 'front' }));
  const svc = await expose(c, 'default', 'vm', 'web', { port: '80', targetPort: '8080', protocol: 'udp' });
  const stored = await c.get(SERVICES, 'web', { namespace: 'default' });
  const spec = stored.spec as {
    type: string;
    selector: Record<string, string>;
    clusterIP: string;
    ports: { port: number; targetPort: number; protocol: string }[];
  };
  assert.deepEqual(spec.selector, { 'kubevirt.io/domain': 'web', tier: 'front' }, "the template labels, not the VM's own");
  assert.deepEqual(
    spec.ports.map((p) => [p.port, p.targetPort, p.protocol]),
    [[80, 8080, 'UDP']],
  );
  assert.equal(spec.type, 'ClusterIP');
  assert.match(spec.clusterIP, /^10\.96\./);
  assert.equal((svc.spec as { clusterIP: string }).clusterIP, spec.clusterIP);
});

test('expose vm --type NodePort --name: the named Service gets a nodePort', async () => {
  const c = await client();
  await c.create(VMS, vm('web', { app: 'web' }));
  await expose(c, 'default', 'vm', 'web', { port: '22', type: 'NodePort', name: 'web-ssh' });
  const spec = (await c.get(SERVICES, 'web-ssh', { namespace: 'default' })).spec as { type: string; ports: { targetPort: number; nodePort: number }[] };
  assert.equal(spec.type, 'NodePort');
  assert.equal(spec.ports[0].targetPort, 22);
  assert.ok(spec.ports[0].nodePort >= 30000 && spec.ports[0].nodePort <= 32767);
});

test('expose vmi: its labels, without the node it runs on', async () => {
  const c = await client();
  await c.create(VMIS, {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'v1', namespace: 'default', labels: { app: 'db', 'kubevirt.io/nodeName': 'node-a' } },
    spec: { domain: { cpu: { cores: 1 }, resources: { requests: { memory: '128Mi' } }, devices: {} } },
  });
  await expose(c, 'default', 'vmi', 'v1', { port: '5432' });
  assert.deepEqual(((await c.get(SERVICES, 'v1', { namespace: 'default' })).spec as { selector?: unknown }).selector, { app: 'db' });
});

test('refused clearly: a VM without template labels, a missing VM, a bad port or type; nothing is created', async () => {
  const c = await client();
  await c.create(VMS, vm('bare'));
  await assert.rejects(
    expose(c, 'default', 'vm', 'bare', { port: '80' }),
    (e: unknown) => e instanceof UsageError && /no labels in spec\.template\.metadata\.labels/.test(e.message),
  );
  await assert.rejects(expose(c, 'default', 'vm', 'nope', { port: '80' }), /VirtualMachine "nope" not found/);
  await assert.rejects(expose(c, 'default', 'vm', 'bare', { port: '80', targetPort: 'http' }), /--target-port must be a port number/);
  await assert.rejects(expose(c, 'default', 'vm', 'bare', { port: '80', type: 'ExternalName' }), /--type must be ClusterIP or NodePort/);
  await assert.rejects(expose(c, 'default', 'pod', 'bare', { port: '80' }), /use vm or vmi/);
  assert.equal((await c.list(SERVICES, { namespace: 'default' })).items.length, 0);
});
