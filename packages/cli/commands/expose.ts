/**
 * `vessel expose vm|vmi NAME --port P [--target-port T] [--type ClusterIP|NodePort] [--name SVC]
 * [--protocol TCP|UDP]`: a Service in front of a VM, as `virtctl expose` makes one. Its
 * selector is the VM's template labels (a VMI's own labels for `vmi`), so it follows every
 * VMI the VM starts; the EndpointSlice controller then lists them.
 */
import type { Command } from 'commander';
import { refs, isReservedKey } from '@vessel/api';
import { isNotFound, type Client, type KubeObject } from '@vessel/client';
import { contextOf, out } from '../context.ts';
import { UsageError } from '../errors.ts';

const { SERVICES, VMS, VMIS } = refs;
const TYPES = ['ClusterIP', 'NodePort'];
const PROTOCOLS = ['TCP', 'UDP'];
/** Labels a VMI gets from where it runs, not from what it is: a selector on them breaks when it moves (virtctl drops them too). */
const PLACEMENT_LABELS = ['kubevirt.io/nodeName', 'kubevirt.io/migrationTargetNodeName', 'kubevirt.io/vm-pool-revision-name'];

export interface ExposeOptions {
  port: string;
  targetPort?: string;
  type?: string;
  name?: string;
  protocol?: string;
  portName?: string;
}

export function registerExpose(program: Command): void {
  program
    .command('expose')
    .description('make a Service for a VM (selector: its template labels) or a VMI (its labels), as virtctl expose does')
    .argument('<kind>', 'vm or vmi')
    .argument('<name>', 'the VirtualMachine or VirtualMachineInstance')
    .requiredOption('--port <port>', 'the port the Service serves on')
    .option('--target-port <port>', "the VM's port the traffic goes to (default: --port); a number: VMs have no named ports")
    .option('--type <type>', 'ClusterIP or NodePort', 'ClusterIP')
    .option('--name <service>', "name of the Service (default: the VM's name)")
    .option('--protocol <protocol>', 'TCP or UDP', 'TCP')
    .option('--port-name <name>', 'name of the Service port')
    .action(async (kind: string, name: string, flags: ExposeOptions, cmd: Command) => {
      const ctx = contextOf(cmd);
      const svc = await expose(ctx.client(), ctx.namespace(), kind, name, flags);
      const spec = svc.spec as { clusterIP?: string; ports?: { port: number; nodePort?: number; protocol: string }[] };
      const ports = (spec.ports ?? []).map((p) => `${p.port}${p.nodePort ? `:${p.nodePort}` : ''}/${p.protocol}`).join(',');
      out(`Service ${svc.metadata?.name} successfully exposed for ${kind} ${name} (cluster IP ${spec.clusterIP}, port ${ports})\n`);
    });
}

/** Creates the Service for `kind` (vm or vmi) `name`; refuses, with what to do, when there is nothing to select on. */
export async function expose(client: Client, ns: string, kind: string, name: string, o: ExposeOptions): Promise<KubeObject> {
  const which = ({ vm: 'vm', vms: 'vm', virtualmachine: 'vm', vmi: 'vmi', vmis: 'vmi', virtualmachineinstance: 'vmi' } as Record<string, 'vm' | 'vmi'>)[
    kind.toLowerCase()
  ];
  if (!which) throw new UsageError(`cannot expose "${kind}": use vm or vmi`);
  const port = portNumber(o.port, '--port');
  const targetPort = o.targetPort === undefined ? port : portNumber(o.targetPort, '--target-port');
  const type = o.type ?? 'ClusterIP';
  if (!TYPES.includes(type)) throw new UsageError(`--type must be ${TYPES.join(' or ')}, not "${type}"`);
  const protocol = (o.protocol ?? 'TCP').toUpperCase();
  if (!PROTOCOLS.includes(protocol)) throw new UsageError(`--protocol must be ${PROTOCOLS.join(' or ')}, not "${o.protocol}"`);

  let source: KubeObject;
  try {
    source = await client.get(which === 'vm' ? VMS : VMIS, name, { namespace: ns });
  } catch (e) {
    if (isNotFound(e)) throw new UsageError(`${which === 'vm' ? 'VirtualMachine' : 'VirtualMachineInstance'} "${name}" not found in namespace "${ns}"`);
    throw e;
  }
  const labels =
    which === 'vm'
      ? ((source.spec as { template?: { metadata?: { labels?: Record<string, string> } } } | undefined)?.template?.metadata?.labels ?? {})
      : (source.metadata?.labels ?? {});
  const selector = Object.fromEntries(Object.entries(labels).filter(([k]) => !PLACEMENT_LABELS.includes(k) && !isReservedKey(k)));
  if (Object.keys(selector).length === 0) {
    throw new UsageError(
      which === 'vm'
        ? `VirtualMachine "${name}" has no labels in spec.template.metadata.labels, so a Service cannot select its VMIs: add one (e.g. kubevirt.io/domain: ${name}) and restart the VM`
        : `VirtualMachineInstance "${name}" has no labels a Service could select it by: add one (kubectl label vmi ${name} app=${name}), or expose its VM`,
    );
  }
  return client.create(
    SERVICES,
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: o.name ?? name, namespace: ns },
      spec: { type, selector, ports: [{ ...(o.portName ? { name: o.portName } : {}), port, targetPort, protocol }] },
    },
    { namespace: ns },
  );
}

function portNumber(v: string, flag: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > 65535) throw new UsageError(`${flag} must be a port number from 1 to 65535, not "${v}"`);
  return n;
}
