/**
 * `vessel up`: the all-in-one single-host mode. Starts the control plane on embedded SQLite
 * and a node agent for this host, makes sure the `tiny` golden image and the demo
 * VirtualMachine exist, and prints how to reach them. Running it again on the same data
 * directory picks up where it left off. Ctrl-C stops the control plane.
 */
import { hostname } from 'node:os';
import type { Command } from 'commander';
import { defaultDataDir, isNotFound, type ResourceRef } from '@vessel/client';
import { note, out } from '../context.ts';
import { untilSignal } from './server.ts';

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
    dataVolumeTemplates: [{
      metadata: { name: 'demo-rootdisk' },
      spec: { sourceRef: { kind: 'DataSource', name: 'tiny', namespace: 'vessel-images' }, storage: { resources: { requests: { storage: '1Gi' } } } },
    }],
  },
};

export function registerUp(program: Command): void {
  program.command('up')
    .description('run Vessel on this host: API server, controllers and a demo VM, on embedded SQLite')
    .option('--data-dir <dir>', 'state directory (default: $VESSEL_DATA_DIR or /var/lib/vessel)')
    .option('--listen <host:port>', 'API server address', '127.0.0.1:6443')
    .action(async (flags: { dataDir?: string; listen: string }) => {
      const dataDir = flags.dataDir ?? defaultDataDir();
      const signalled = untilSignal(); // listening from the start: see untilSignal
      const { startControlPlane } = await import('../control-plane.ts');
      const cp = await startControlPlane({
        dataDir, listen: flags.listen, log: process.env.VESSEL_LOG ? (l) => note(`${l}\n`) : undefined,
        agent: { nodeName: hostname() },
      });
      const { ensureTinyImage } = await import('../golden.ts');
      const tiny = await ensureTinyImage(cp.client, (line) => note(`${line}\n`));
      let demo = 'exists';
      try {
        await cp.client.get(VM, 'demo', { namespace: 'default' });
      } catch (e) {
        if (!isNotFound(e)) throw e;
        await cp.client.create(VM, DEMO_VM, { namespace: 'default' });
        demo = 'created';
      }
      const vessel = 'bin/vessel';
      out([
        'Vessel is up.',
        `  API server   ${cp.server.url}`,
        `  kubeconfig   ${cp.server.kubeconfigPath}`,
        `               export KUBECONFIG=${cp.server.kubeconfigPath}   (kubectl and ${vessel} both use it)`,
        `  node         ${cp.agent?.nodeName} (this host; pools under ${dataDir}/pools)`,
        `  golden image vessel-images/tiny (${tiny}):  ${vessel} get datasource,dv,pvc -n vessel-images`,
        `  demo VM      default/demo (${demo}):  ${vessel} get vm demo   |   ${vessel} get dv,pvc   (its disk: a linked clone of tiny)`,
        '               Booting VMs (console, VNC) is the VM runtime, the next piece of work: demo has its disk but no guest yet.',
        `  try          ${vessel} image-upload dv mydisk --image-path FILE --size 2Gi   |   kubectl explain datavolume.spec.source`,
        'Ctrl-C stops the control plane.',
        '',
      ].join('\n'));
      await signalled;
      note('shutting down\n');
      await cp.close();
    });
}
