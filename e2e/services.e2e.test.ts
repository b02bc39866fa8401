/**
 * Services end to end: a real server and controllers, an unmodified kubectl. ClusterIP and
 * NodePort allocation as a user sees it, and EndpointSlices following VMIs.
 *
 * No QEMU and no agent run here: where the node agent would report a running VMI (phase,
 * node, Ready, status.interfaces with its pod-network address), the test writes that status
 * itself through the admin client. Those writes are marked AGENT STAND-IN below; everything
 * else is what a user does.
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { refs, type KubeObject } from '@vessel/api';
import { setCondition, updateStatus } from '@vessel/runtime';
import { eventually, kubectlFor, KUBECTL_SKIP, startVessel, type Vessel } from './harness.ts';

const { ENDPOINTSLICES, IPADDRESSES, NODES, VMIS } = refs;
type Obj = Record<string, unknown>;
interface Slice {
  metadata: { name: string };
  endpoints: { addresses: string[]; conditions: { ready: boolean; serving: boolean; terminating: boolean }; nodeName?: string; targetRef: { name: string } }[];
  ports: { port: number }[];
}

describe('Services', { skip: KUBECTL_SKIP }, () => {
  let v: Vessel;
  const { kubectl, ok } = kubectlFor(() => v);

  before(async () => {
    v = await startVessel();
  });
  after(async () => {
    await v?.close();
  });

  const getJson = async (args: string[]) => JSON.parse(await ok([...args, '-o', 'json'])) as Obj;
  const slices = async (svc: string) =>
    (await v.client.list(ENDPOINTSLICES, { namespace: 'default', labelSelector: `kubernetes.io/service-name=${svc}` })).items as unknown as Slice[];

  /** AGENT STAND-IN: what the node agent writes once a VMI runs on `node` with `ip` on its pod network. */
  const agentReports = (name: string, ip: string, node: string, ready = true) =>
    updateStatus(v.client, VMIS, 'default', name, (s) => {
      s.phase = 'Running';
      s.nodeName = node;
      s.interfaces = [{ name: 'default', ipAddress: ip, ipAddresses: [ip], mac: '0a:58:0a:f4:00:01', interfaceName: 'eth0', infoSource: 'domain' }];
      setCondition(s, { type: 'Ready', status: ready ? 'True' : 'False', reason: ready ? '' : 'GuestNotRunning', message: '' }, false);
    });

  let webIP = '';

  it('kubectl create service: the reply and kubectl get svc carry the allocated ClusterIP, recorded as an IPAddress', async () => {
    const created = JSON.parse(await ok(['create', 'service', 'clusterip', 'web', '--tcp=80:8080', '-o', 'json'])) as {
      spec: { clusterIP: string; clusterIPs: string[] };
    };
    webIP = created.spec.clusterIP;
    assert.match(webIP, /^10\.96\.\d+\.\d+$/);
    assert.deepEqual(created.spec.clusterIPs, [webIP]);
    const table = await ok(['get', 'svc', 'web']);
    assert.match(table, /^NAME\s+TYPE\s+CLUSTER-IP\s+EXTERNAL-IP\s+PORT\(S\)\s+AGE/m);
    assert.match(table, new RegExp(`^web\\s+ClusterIP\\s+${webIP.replace(/\./g, '\\.')}\\s+<none>\\s+80/TCP\\s`, 'm'));
    const ip = await getJson(['get', 'ipaddress', webIP]);
    assert.deepEqual((ip.spec as Obj).parentRef, { group: '', resource: 'services', namespace: 'default', name: 'web' });
    assert.match(await ok(['get', 'ipaddresses']), new RegExp(`^${webIP.replace(/\./g, '\\.')}\\s+services/default/web`, 'm'));
  });

  it('kubectl apply of a Service manifest again, client- and server-side, keeps its ClusterIP and nodePort', async () => {
    const manifest =
      'apiVersion: v1\nkind: Service\nmetadata:\n  name: applied\nspec:\n  type: NodePort\n  selector:\n    app: applied\n  ports:\n  - port: 80\n    targetPort: 8080\n';
    assert.match(await ok(['apply', '-f', '-'], manifest), /service\/applied created/);
    const first = await getJson(['get', 'svc', 'applied']);
    const [ip, port] = [(first.spec as Obj).clusterIP, ((first.spec as Obj).ports as Obj[])[0].nodePort];
    assert.match(await ok(['apply', '-f', '-'], manifest.replace('8080', '8081')), /service\/applied configured/);
    assert.match(await ok(['apply', '--server-side', '--force-conflicts', '-f', '-'], manifest), /serverside-applied/);
    const last = await getJson(['get', 'svc', 'applied']);
    assert.deepEqual([(last.spec as Obj).clusterIP, ((last.spec as Obj).ports as Obj[])[0].nodePort], [ip, port]);
  });

  it('a requested ClusterIP is honoured; one already taken or outside the range is refused naming spec.clusterIP', async () => {
    const mine = JSON.parse(await ok(['create', 'service', 'clusterip', 'fixed', '--tcp=53:53', '--clusterip=10.96.0.10', '-o', 'json'])) as {
      spec: { clusterIP: string };
    };
    assert.equal(mine.spec.clusterIP, '10.96.0.10');
    const taken = await kubectl(['create', 'service', 'clusterip', 'again', '--tcp=80', `--clusterip=${webIP}`]);
    assert.notEqual(taken.code, 0);
    assert.match(taken.err, /Service "again" is invalid: spec\.clusterIP: Invalid value: .*already allocated/);
    const outside = await kubectl(['create', 'service', 'clusterip', 'outside', '--tcp=80', '--clusterip=192.168.1.1']);
    assert.match(
      outside.err,
      /spec\.clusterIP: Invalid value: "192\.168\.1\.1": provided IP is not in the valid range\. The range of valid IPs is 10\.96\.0\.0\/16/,
    );
    assert.match((await kubectl(['get', 'svc', 'again'])).err, /NotFound|not found/);
  });

  it('NodePort: a requested port is honoured and not given twice; others are allocated from 30000-32767', async () => {
    const np = await getJson(['create', 'service', 'nodeport', 'np', '--tcp=80:8080', '--node-port=30080']);
    assert.equal(((np.spec as Obj).ports as Obj[])[0].nodePort, 30080);
    assert.match(await ok(['get', 'svc', 'np']), /^np\s+NodePort\s+10\.96\.\S+\s+<none>\s+80:30080\/TCP/m);
    const dup = await kubectl(['create', 'service', 'nodeport', 'np2', '--tcp=81:8080', '--node-port=30080']);
    assert.match(dup.err, /spec\.ports\[0\]\.nodePort: Invalid value: 30080: provided port is already allocated/);
    const auto = await getJson(['create', 'service', 'nodeport', 'np3', '--tcp=81:8080']);
    const port = ((auto.spec as Obj).ports as Obj[])[0].nodePort as number;
    assert.ok(port >= 30000 && port <= 32767 && port !== 30080, String(port));
  });

  it('EndpointSlices list the selected VMIs, follow Ready going false within 2 s and a deletion, and print as kubectl does', async () => {
    // AGENT STAND-IN: two agents register their Nodes, so the scheduler binds the VMIs (before
    // that it would keep writing them Unschedulable, over the agent's status).
    for (const node of ['node-a', 'node-b']) {
      await v.client.create(NODES, { apiVersion: 'v1', kind: 'Node', metadata: { name: node, labels: { 'kubernetes.io/hostname': node } } } as KubeObject);
      await updateStatus(v.client, NODES, undefined, node, (s) => {
        Object.assign(s, { capacity: { cpu: '4', memory: '8Gi', pods: '110' }, allocatable: { cpu: '4', memory: '8Gi', pods: '110' } });
        setCondition(s, { type: 'Ready', status: 'True', reason: 'KubeletReady', message: '' });
      });
    }
    // `kubectl create service clusterip web` selects app=web.
    for (const [name, ip, node] of [
      ['web-1', '10.244.0.5', 'node-a'],
      ['web-2', '10.244.0.6', 'node-b'],
    ]) {
      await v.client.create(VMIS, {
        apiVersion: 'kubevirt.io/v1',
        kind: 'VirtualMachineInstance',
        metadata: { name, namespace: 'default', labels: { app: 'web' } },
        spec: { nodeSelector: { 'kubernetes.io/hostname': node }, domain: { cpu: { cores: 1 }, resources: { requests: { memory: '64Mi' } }, devices: {} } },
      } as KubeObject);
      await eventually(
        `${name} scheduled`,
        async () => ((await v.client.get(VMIS, name, { namespace: 'default' })).status as { nodeName?: string } | undefined)?.nodeName,
        10_000,
        50,
      );
      await agentReports(name, ip, node);
    }
    const ready = await eventually(
      'both VMIs in the slice',
      async () => {
        const s = await slices('web');
        const eps = s.flatMap((x) => x.endpoints);
        return eps.length === 2 && eps.every((e) => e.conditions.ready) ? s : undefined;
      },
      10_000,
      50,
    );
    assert.deepEqual(
      ready[0].ports.map((p) => p.port),
      [8080],
    );
    assert.deepEqual(ready[0].endpoints.map((e) => [e.targetRef.name, e.addresses[0], e.nodeName]).sort(), [
      ['web-1', '10.244.0.5', 'node-a'],
      ['web-2', '10.244.0.6', 'node-b'],
    ]);
    const table = await ok(['get', 'endpointslices', '-l', 'kubernetes.io/service-name=web']);
    assert.match(table, /^NAME\s+ADDRESSTYPE\s+PORTS\s+ENDPOINTS\s+AGE/m);
    assert.match(table, new RegExp(`^${ready[0].metadata.name}\\s+IPv4\\s+8080\\s+10\\.244\\.0\\.5,10\\.244\\.0\\.6\\s`, 'm'));

    // The guest stops answering: the agent reports Ready=False. The endpoint must turn not ready within 2 s.
    const t0 = Date.now();
    await agentReports('web-1', '10.244.0.5', 'node-a', false);
    await eventually(
      'web-1 not ready',
      async () => ((await slices('web')).flatMap((x) => x.endpoints).find((e) => e.targetRef.name === 'web-1')?.conditions.ready === false ? true : undefined),
      2000,
      20,
    );
    const notReadyMs = Date.now() - t0;
    assert.ok(notReadyMs < 2000, `not ready after ${notReadyMs} ms`);

    const t1 = Date.now();
    await v.client.delete(VMIS, 'web-1', { namespace: 'default' });
    await eventually(
      'web-1 gone from the slice',
      async () =>
        (await slices('web'))
          .flatMap((x) => x.endpoints)
          .map((e) => e.targetRef.name)
          .join() === 'web-2'
          ? true
          : undefined,
      2000,
      20,
    );
    assert.ok(Date.now() - t1 < 2000);
    console.log(`# endpoint not ready ${notReadyMs} ms after Ready=False; removed ${Date.now() - t1} ms after the VMI's deletion`);
  });

  it('deleting a Service releases its ClusterIP (its IPAddress goes) and its EndpointSlices', async () => {
    await ok(['delete', 'svc', 'web']);
    await eventually(
      'the IPAddress released',
      async () => ((await v.client.list(IPADDRESSES)).items.some((o) => o.metadata?.name === webIP) ? undefined : true),
      5000,
      50,
    );
    await eventually('the slices gone', async () => ((await slices('web')).length === 0 ? true : undefined), 5000, 50);
    // The address is free again: another Service may ask for it.
    const again = await getJson(['create', 'service', 'clusterip', 'web-again', '--tcp=80', `--clusterip=${webIP}`]);
    assert.equal((again.spec as Obj).clusterIP, webIP);
  });

  it("deleting a namespace releases its Services' ClusterIPs and NodePorts", async () => {
    await ok(['create', 'namespace', 'team']);
    const svc = await getJson(['-n', 'team', 'create', 'service', 'nodeport', 'api', '--tcp=443:8443', '--node-port=30443']);
    const ip = (svc.spec as Obj).clusterIP as string;
    await ok(['delete', 'namespace', 'team', '--wait=false']);
    await eventually('the namespace gone', async () => ((await kubectl(['get', 'namespace', 'team'])).code !== 0 ? true : undefined), 15_000, 100);
    assert.equal(
      (await v.client.list(IPADDRESSES)).items.some((o) => o.metadata?.name === ip),
      false,
    );
    // Port 30443 is free again.
    const again = await getJson(['create', 'service', 'nodeport', 'api2', '--tcp=443:8443', '--node-port=30443']);
    assert.equal(((again.spec as Obj).ports as Obj[])[0].nodePort, 30443);
  });
});
