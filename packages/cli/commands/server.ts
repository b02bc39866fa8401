/**
 * `vessel server`: runs the API server in the foreground until SIGINT/SIGTERM, then closes it
 * cleanly (open watches ended, store closed). The server writes DATA_DIR/kubeconfig for the
 * admin, which `vessel` finds through $VESSEL_DATA_DIR or the default data dir.
 */
import type { Command } from 'commander';
import { CIDR_PROBLEM, DEFAULT_SERVICE_CIDR, ipam, parseCidr } from '@vessel/api';
import { defaultDataDir } from '@vessel/client';
import { note, out } from '../context.ts';
import { UsageError } from '../errors.ts';

interface ServerFlags {
  dataDir?: string;
  listen: string;
  store: string;
  sqlitePath?: string;
  etcdEndpoints?: string;
  etcdPrefix?: string;
  controllers: boolean;
  cpuAllocationRatio?: string;
  memoryOvercommit?: string;
  vmNetworkCidr: string;
  serviceCidr: string;
  ovaRoot: string[];
  forkliftMaxVmInflight?: string;
  forkliftHookDir?: string;
  forkliftPrecopyInterval?: string;
}

type StoreFlag = { kind: 'sqlite'; path: string } | { kind: 'etcd'; endpoints: string[]; prefix?: string } | undefined;

export function registerServer(program: Command): void {
  program
    .command('server')
    .description('run the Vessel API server in the foreground')
    .option('--data-dir <dir>', 'where certificates, the kubeconfig and the SQLite store live (default: $VESSEL_DATA_DIR or /var/lib/vessel)')
    .option('--listen <host:port>', 'address to serve on; port 0 picks a free port', '127.0.0.1:6443')
    .option('--store <kind>', 'sqlite or etcd', 'sqlite')
    .option('--sqlite-path <file>', 'SQLite database file (default: DATA_DIR/store.db)')
    .option('--etcd-endpoints <urls>', 'comma-separated etcd URLs, e.g. http://127.0.0.1:2379')
    .option('--etcd-prefix <prefix>', 'key prefix in etcd, to share one etcd between servers')
    .option('--no-controllers', 'serve the API only; with several servers on one etcd, let one run the controllers')
    .option('--cpu-allocation-ratio <n>', "vCPUs per requested CPU when a VM requests none (KubeVirt's cpuAllocationRatio)", '10')
    .option('--memory-overcommit <percent>', "guest memory as a percentage of what a VM's scheduling reserves (KubeVirt's memoryOvercommit)", '100')
    .option('--service-cidr <cidr>', 'the range ClusterIPs of Services come from', DEFAULT_SERVICE_CIDR)
    .option(VM_NETWORK_FLAG, VM_NETWORK_HELP, ipam.DEFAULT_VM_NETWORK_CIDR)
    .option('--ova-root <dir>', 'a directory `ova` Providers may read (an NFS mount); repeatable', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--forklift-max-vm-inflight <n>', "VMs of one Forklift migration run at once (Forklift's controller_max_vm_inflight)", '2')
    .option('--forklift-hook-dir <dir>', 'the directory of hook scripts Forklift Hooks may name (docs/forklift.md); none: script hooks are refused')
    .option('--forklift-precopy-interval <minutes>', "minutes between a warm migration's precopy rounds (Forklift's controller_precopy_interval)", '60')
    .action(async (flags: ServerFlags) => {
      const serviceCidr = serviceCidrFlag(flags.serviceCidr);
      const dataDir = flags.dataDir ?? defaultDataDir();
      const store = storeConfig(flags);
      const vmNetworkCidr = vmNetworkFlag(flags.vmNetworkCidr);
      // Loaded here, not at the top, so the other commands start without the server's modules.
      const signalled = untilSignal(); // listening from the start: a signal during start-up still shuts down cleanly
      const { startControlPlane } = await import('../control-plane.ts');
      const cp = await startControlPlane({
        dataDir,
        listen: flags.listen,
        store,
        controllers: flags.controllers,
        scheduling: schedulingFlags(flags),
        serviceCidr,
        vmNetworkCidr,
        ovaRoots: flags.ovaRoot,
        forkliftMaxInFlight: positiveInt('--forklift-max-vm-inflight', flags.forkliftMaxVmInflight ?? '2'),
        forkliftHookDir: flags.forkliftHookDir,
        forkliftPrecopyIntervalMs: positiveInt('--forklift-precopy-interval', flags.forkliftPrecopyInterval ?? '60') * 60_000,
        log: (line) => note(`${line}\n`),
      });
      const server = cp.server;
      out(`Vessel API server listening on ${server.url}\n`);
      out(`kubeconfig: ${server.kubeconfigPath}\n`);
      out(`  export KUBECONFIG=${server.kubeconfigPath}\n`);
      await signalled;
      note('shutting down\n');
      await cp.close();
    });
}

export const VM_NETWORK_FLAG = '--vm-network-cidr <cidr>';
export const VM_NETWORK_HELP = 'the VM network IPAM hands addresses out of (VM NICs on the pod network, node gateways); IPv4, prefix 8 to 30';

/** The --vm-network-cidr value, refused before anything starts when it is not a usable range. */
export function vmNetworkFlag(text: string): string {
  const cidr = parseCidr(text);
  if (!cidr) throw new UsageError(`--vm-network-cidr "${text}" ${CIDR_PROBLEM}`);
  return cidr.text;
}

/** `--service-cidr`, normalised ("10.96.0.0/16"), or a usage error saying what is wrong. */
export function serviceCidrFlag(v: string): string {
  const cidr = parseCidr(v);
  if (!cidr) throw new UsageError(`--service-cidr "${v}" ${CIDR_PROBLEM}`);
  return cidr.text;
}

function positiveInt(flag: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`${flag} must be a positive integer, not "${v}"`);
  return n;
}

function schedulingFlags(flags: ServerFlags): { cpuAllocationRatio: number; memoryOvercommitPercent: number } {
  const ratio = Number(flags.cpuAllocationRatio ?? 10);
  const percent = Number(flags.memoryOvercommit ?? 100);
  if (!(ratio > 0)) throw new UsageError(`--cpu-allocation-ratio must be a positive number, not "${flags.cpuAllocationRatio}"`);
  if (!(percent >= 10)) throw new UsageError(`--memory-overcommit must be a percentage of at least 10, not "${flags.memoryOvercommit}"`);
  return { cpuAllocationRatio: ratio, memoryOvercommitPercent: percent };
}

function storeConfig(flags: ServerFlags): StoreFlag {
  if (flags.store === 'etcd') {
    const endpoints = (flags.etcdEndpoints ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    if (endpoints.length === 0) throw new UsageError('--store etcd needs --etcd-endpoints, e.g. http://127.0.0.1:2379');
    return { kind: 'etcd', endpoints, prefix: flags.etcdPrefix };
  }
  if (flags.store !== 'sqlite') throw new UsageError(`unknown --store "${flags.store}": use sqlite or etcd`);
  if (flags.etcdEndpoints) throw new UsageError('--etcd-endpoints needs --store etcd');
  return flags.sqlitePath ? { kind: 'sqlite', path: flags.sqlitePath } : undefined;
}

/**
 * Resolves on the first SIGINT or SIGTERM. The handlers stay installed: a second signal while
 * shutting down means "now" and exits with 1, instead of Node's default of dying by signal.
 */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    let received = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (received) process.exit(1);
      received = true;
      resolve(signal);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
