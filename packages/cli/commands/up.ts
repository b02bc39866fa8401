/**
 * `vessel up`: the all-in-one single-host mode. Starts the control plane on embedded SQLite
 * and a node agent for this host, makes sure the `tiny` golden image (a DataImportCron
 * polling the read-only registry it serves on loopback, cli/local-registry.ts) and the demo
 * VirtualMachine exist, and prints how to reach them. Running it again on the same data
 * directory picks up where it left off. Ctrl-C stops the control plane.
 */
import { hostname } from 'node:os';
import type { Command } from 'commander';
import { defaultDataDir, isNotFound, type ResourceRef } from '@vessel/client';
import type { QemuPriority } from '@vessel/agent';
import { note, out } from '../context.ts';
import { UsageError } from '../errors.ts';
import { qemuPriorityFlag, QEMU_PRIORITY_DEFAULT, QEMU_PRIORITY_HELP } from './agent.ts';
import { DEFAULT_SERVICE_CIDR, ipam } from '@vessel/api';
import { serviceCidrFlag, untilSignal, vmNetworkFlag, VM_NETWORK_FLAG, VM_NETWORK_HELP } from './server.ts';

const VM: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachines', namespaced: true };

export const DEMO_VM = {
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachine',
  metadata: { name: 'demo', namespace: 'default', labels: { app: 'demo' } },
  spec: {
    runStrategy: 'Always',
    template: {
      metadata: { labels: { 'kubevirt.io/vm': 'demo' } },
      spec: {
        domain: {
          cpu: { cores: 1 },
          resources: { requests: { memory: '256Mi' } },
          devices: { disks: [{ name: 'rootdisk', disk: { bus: 'virtio' } }] },
        },
        volumes: [{ name: 'rootdisk', dataVolume: { name: 'demo-rootdisk' } }],
      },
    },
    dataVolumeTemplates: [
      {
        metadata: { name: 'demo-rootdisk' },
        spec: { sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'vessel-images' }, storage: { resources: { requests: { storage: '1Gi' } } } },
      },
    ],
  },
};

/**
 * `vessel up --nodes N`: the control plane and N agents on a dev cluster (packages/cli/dev-cluster.ts).
 * The golden image goes to the shared pool, which every node can clone from.
 */
async function upCluster(o: {
  dataDir: string;
  listen: string;
  nodes: number;
  fabricCidr: string;
  qemuPriority: QemuPriority;
  allowLoopbackImports: boolean;
  stopVmsOnExit: boolean;
  serviceCidr: string;
  vmNetworkCidr: string;
}): Promise<void> {
  const signalled = untilSignal();
  const log = process.env.VESSEL_LOG ? (l: string) => note(`${l}\n`) : undefined;
  const { startControlPlane } = await import('../control-plane.ts');
  const { startDevNodes } = await import('../dev-cluster.ts');
  const { ensureTinyCron, startTinyRegistry } = await import('../golden.ts');
  // As on one node: the agents run in this process (their QEMUs in the nodes' namespaces), so the loopback registry reaches them.
  const registry = await startTinyRegistry(o.dataDir, (line) => note(`${line}\n`));
  const cp = await startControlPlane({
    dataDir: o.dataDir,
    listen: o.listen,
    serviceCidr: o.serviceCidr,
    vmNetworkCidr: o.vmNetworkCidr,
    allowLoopbackPolls: o.allowLoopbackImports,
    localRegistry: { address: registry.address, port: registry.port },
    log,
  }).catch(async (e: unknown) => {
    await registry.close();
    throw e;
  });
  let dev: Awaited<ReturnType<typeof startDevNodes>> | undefined;
  try {
    dev = await startDevNodes({
      kubeconfig: cp.server.kubeconfigPath,
      dataDir: o.dataDir,
      nodes: o.nodes,
      fabricCidr: o.fabricCidr,
      qemuPriority: o.qemuPriority,
      allowLoopbackImports: o.allowLoopbackImports,
      allowedImportSources: [{ address: registry.address, port: registry.port }],
      log,
    });
    const tiny = (await ensureTinyCron(cp.client, (line) => note(`${line}\n`), registry.url, { storageClass: 'shared' })).result;
    const vessel = 'bin/vessel';
    const width = Math.max(4, ...dev.cluster.nodes.map((n) => n.name.length));
    out(
      [
        `Vessel is up: a dev cluster of ${o.nodes} node${o.nodes === 1 ? '' : 's'}.`,
        `  API server   ${cp.server.url}`,
        `  kubeconfig   ${cp.server.kubeconfigPath}`,
        `               export KUBECONFIG=${cp.server.kubeconfigPath}   (kubectl and ${vessel} both use it)`,
        `  golden image vessel-images/tiny (${tiny}, shared pool)`,
        `  nodes        ${'NAME'.padEnd(width)}  NETNS                FABRIC IP`,
        ...dev.cluster.nodes.map((n) => `               ${n.name.padEnd(width)}  ${n.netns.padEnd(19)}  ${n.fabricIp}`),
        `  look inside  ip netns exec ${dev.cluster.nodes[0].netns} ip addr show vsl-br0`,
        'Ctrl-C stops the cluster; its namespaces go, and with them the VMs that ran in them.',
        '',
      ].join('\n'),
    );
    await signalled;
    if (o.stopVmsOnExit) {
      note('stopping VMs\n');
      await stopAllVms(cp.client);
    }
    note('shutting down\n');
  } finally {
    await dev?.close();
    await cp.close();
    await registry.close();
  }
}

const VMI: ResourceRef = { group: 'kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };

/** Halts every VM (their guests get ACPI power-off) and waits, up to a minute, for their instances to go. */
async function stopAllVms(client: import('@vessel/client').Client): Promise<void> {
  for (const vm of (await client.list(VM)).items) {
    await client
      .patch(VM, vm.metadata!.name!, { spec: { runStrategy: 'Halted', running: null } }, { namespace: vm.metadata!.namespace })
      .catch((e: unknown) => {
        // A VM deleted meanwhile needs no halt; any other failure leaves its guest running: say so and go on with the rest.
        if (!isNotFound(e)) note(`cannot halt VM ${vm.metadata!.namespace}/${vm.metadata!.name}: ${e instanceof Error ? e.message : e}\n`);
      });
  }
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline && (await client.list(VMI)).items.length > 0) await new Promise((r) => setTimeout(r, 500));
}

export function registerUp(program: Command): void {
  program
    .command('up')
    .description('run Vessel on this host: API server, controllers and a demo VM, on embedded SQLite')
    .option('--data-dir <dir>', 'state directory (default: $VESSEL_DATA_DIR or /var/lib/vessel)')
    .option('--listen <host:port>', 'API server address', '127.0.0.1:6443')
    .option(
      '--allow-loopback-imports',
      'let http and registry DataVolumes import from loopback addresses (127.0.0.0/8, ::1); labs and tests only: any tenant could read services that listen on this host',
    )
    .option('--qemu-priority <spec>', QEMU_PRIORITY_HELP, QEMU_PRIORITY_DEFAULT)
    .option('--service-cidr <cidr>', 'the range ClusterIPs of Services come from', DEFAULT_SERVICE_CIDR)
    .option('--stop-vms-on-exit', 'stop every VM when Vessel stops (by default VMs keep running and are re-adopted next time)')
    .option(VM_NETWORK_FLAG, VM_NETWORK_HELP, ipam.DEFAULT_VM_NETWORK_CIDR)
    .option(
      '--nodes <n>',
      'a dev cluster of N nodes on this host instead of one: a network namespace and an agent per node, a fabric between them and the cluster network (VXLAN, DHCP) on top',
    )
    .option('--fabric-cidr <cidr>', 'with --nodes: the fabric segment between the nodes (node i gets host .10+i)', '10.233.0.0/24')
    .action(
      async (flags: {
        dataDir?: string;
        listen: string;
        stopVmsOnExit?: boolean;
        allowLoopbackImports?: boolean;
        qemuPriority: string;
        serviceCidr: string;
        vmNetworkCidr: string;
        nodes?: string;
        fabricCidr: string;
      }) => {
        const serviceCidr = serviceCidrFlag(flags.serviceCidr);
        const vmNetworkCidr = vmNetworkFlag(flags.vmNetworkCidr);
        const qemuPriority = await qemuPriorityFlag(flags.qemuPriority);
        const dataDir = flags.dataDir ?? defaultDataDir();
        if (flags.nodes !== undefined) {
          const n = Number(flags.nodes);
          if (!Number.isInteger(n) || n < 1 || n > 200) throw new UsageError(`--nodes must be a whole number from 1 to 200, not ${flags.nodes}`);
          return upCluster({
            dataDir,
            listen: flags.listen,
            nodes: n,
            fabricCidr: flags.fabricCidr,
            qemuPriority,
            allowLoopbackImports: !!flags.allowLoopbackImports,
            stopVmsOnExit: !!flags.stopVmsOnExit,
            serviceCidr,
            vmNetworkCidr,
          });
        }
        const signalled = untilSignal(); // listening from the start: see untilSignal
        const { startControlPlane } = await import('../control-plane.ts');
        const { ensureTinyCron, startTinyRegistry } = await import('../golden.ts');
        // The tiny image's own registry, read-only on loopback: the cron polls it and the agent
        // imports from it, both allowed exactly this address and port (not loopback at large).
        const registry = await startTinyRegistry(dataDir, (line) => note(`${line}\n`));
        const cp = await startControlPlane({
          dataDir,
          listen: flags.listen,
          serviceCidr,
          vmNetworkCidr,
          log: process.env.VESSEL_LOG ? (l) => note(`${l}\n`) : undefined,
          agent: { nodeName: hostname(), allowLoopbackImports: !!flags.allowLoopbackImports, qemuPriority },
          localRegistry: { address: registry.address, port: registry.port },
        }).catch(async (e: unknown) => {
          await registry.close();
          throw e;
        });
        const tiny = (await ensureTinyCron(cp.client, (line) => note(`${line}\n`), registry.url)).result;
        let demo = 'exists';
        try {
          await cp.client.get(VM, 'demo', { namespace: 'default' });
        } catch (e) {
          if (!isNotFound(e)) throw e;
          await cp.client.create(VM, DEMO_VM, { namespace: 'default' });
          demo = 'created';
        }
        const vessel = 'bin/vessel';
        out(
          [
            'Vessel is up.',
            `  API server   ${cp.server.url}`,
            `  kubeconfig   ${cp.server.kubeconfigPath}`,
            `               export KUBECONFIG=${cp.server.kubeconfigPath}   (kubectl and ${vessel} both use it)`,
            `  node         ${cp.agent?.nodeName} (this host; pools under ${dataDir}/pools)`,
            `  golden image vessel-images/tiny (${tiny}):  ${vessel} get dataimportcron,datasource,dv,pvc -n vessel-images`,
            `               DataImportCron tiny polls ${registry.url.replace(/^docker:\/\//, '')} (this process, read-only, loopback)`,
            `  demo VM      default/demo (${demo}), booting under ${cp.agent?.accel.toUpperCase()}:  ${vessel} get vm demo   |   ${vessel} console demo   (^] leaves)`,
            `               its disk is a linked clone of tiny: ${vessel} get dv,pvc`,
            `  try          ${vessel} stop|start|restart|pause|unpause demo   |   ${vessel} vnc demo   |   ${vessel} logs demo`,
            `               ${vessel} image-upload dv mydisk --image-path FILE --size 2Gi   |   kubectl explain vm.spec.runStrategy`,
            `Ctrl-C stops the control plane; ${flags.stopVmsOnExit ? 'VMs are stopped too (--stop-vms-on-exit).' : 'VMs keep running and are picked up again by the next `vessel up`.'}`,
            '',
          ].join('\n'),
        );
        await signalled;
        if (flags.stopVmsOnExit) {
          note('stopping VMs\n');
          await stopAllVms(cp.client);
        }
        note('shutting down\n');
        await cp.close();
        await registry.close();
      },
    );
}
