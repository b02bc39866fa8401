/**
 * `vessel agent`: the node agent in the foreground. It reaches the API server with a
 * kubeconfig (--kubeconfig, or the data directory's) or with --server, --token and
 * --certificate-authority, registers the Node and serves this host's storage pools.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { Command } from 'commander';
import type { QemuPriority } from '@vessel/agent';
import { Client, defaultDataDir } from '@vessel/client';
import { contextOf, note, out } from '../context.ts';
import { UsageError } from '../errors.ts';
import { untilSignal } from './server.ts';
import { clientVersion } from './version.ts';

interface AgentFlags {
  server?: string;
  token?: string;
  certificateAuthority?: string;
  insecureSkipTlsVerify?: boolean;
  nodeName?: string;
  dataDir?: string;
  sharedDir?: string;
  listen: string;
  address?: string;
  nodeStatusUpdateFrequency: string;
  allowLoopbackImports?: boolean;
  ovaRoot: string[];
  qemuPriority: string;
  systemReserved: string;
  netns?: string;
  fabricIp?: string;
  nncpProbeTimeout: string;
  fencingTimeout: string;
  migrationTls: string;
  reservedCpus?: string;
}

/** The --qemu-priority option, shared with `vessel up`. */
export const QEMU_PRIORITY_HELP =
  'how QEMU runs below the control plane: off, or a list of nice=0..19, batch|no-batch (SCHED_BATCH), cgroups|no-cgroups (a cgroup per VM where cgroup v2 is delegated)';
export const QEMU_PRIORITY_DEFAULT = 'nice=10,batch,cgroups';

/** Parses --qemu-priority into the agent's option (a UsageError when malformed). */
export async function qemuPriorityFlag(spec: string): Promise<QemuPriority> {
  const { parseQemuPriority } = await import('@vessel/agent');
  try {
    return parseQemuPriority(spec);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export function registerAgent(program: Command): void {
  program
    .command('agent')
    .description('run the node agent in the foreground: registers this host as a Node and runs its storage (and VMs)')
    .option('--server <url>', 'API server URL (default: from the kubeconfig)')
    .option('--token <token>', 'bearer token for --server')
    .option('--certificate-authority <file>', "PEM of the server's CA, for --server")
    .option('--insecure-skip-tls-verify', "do not check the server's certificate (tests only)")
    .option('--node-name <name>', 'Node name (default: the host name)')
    .option('--data-dir <dir>', 'state directory: pools/local, agent certificate (default: $VESSEL_DATA_DIR or /var/lib/vessel)')
    .option('--shared-dir <dir>', 'directory of the shared pool, the same path on every node (default: DATA_DIR/pools/shared)')
    .option('--listen <host:port>', "the agent endpoint's address (the server connects to it)", '127.0.0.1:0')
    .option('--address <ip>', 'the address the server should use for this node (default: the --listen host)')
    .option(
      '--ova-root <dir>',
      "a directory of OVA packages (as the server's --ova-root, the same mount): a migration's disks are read from it in place; repeatable",
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option(
      '--allow-loopback-imports',
      'let http and registry DataVolumes import from loopback addresses (127.0.0.0/8, ::1); labs and tests only: any tenant could read services that listen on this host',
    )
    .option('--qemu-priority <spec>', QEMU_PRIORITY_HELP, QEMU_PRIORITY_DEFAULT)
    .option(
      '--reserved-cpus <list>',
      'host CPUs kept for the system (e.g. 0 or 0-1): turns on the CPU manager, whose other CPUs run dedicatedCpuPlacement VMs exclusively (docs/pinning.md)',
    )
    .option(
      '--system-reserved <spec>',
      "cpu and memory the node keeps for itself, left out of its allocatable (kubelet's flag), e.g. cpu=100m,memory=256Mi",
      'cpu=100m,memory=256Mi',
    )
    .option(
      '--fabric-ip <ip>',
      "this host's address on the fabric between the nodes: runs the node's side of the cluster network (bridge vsl-br0, VXLAN to the other nodes, DHCP) and publishes it on the Node",
    )
    .option(
      '--netns <name>',
      'a network namespace (ip netns) standing in for this host: the cluster network and the QEMU processes go there (the dev cluster); needs --fabric-ip',
    )
    .option(
      '--migration-tls <bool>',
      "TLS on live migration streams, each node's certificate signed by its own migration CA published on its Node (every agent of the cluster must agree)",
      'true',
    )
    .option(
      '--nncp-probe-timeout <seconds>',
      'how long connectivity (API server, the other nodes) may stay broken after a NodeNetworkConfigurationPolicy is applied before it is rolled back',
      '120',
    )
    .option(
      '--node-status-update-frequency <seconds>',
      "how often the Node's heartbeat is posted (kubelet's flag; the server marks a node Unknown after 8 s without)",
      '2',
    )
    .option(
      '--fencing-timeout <seconds>',
      'how long the agent may reach neither the API server nor most of its peer agents before it kills its VMs itself, so the control plane may restart them elsewhere (0: never)',
      '8',
    )
    .action(async (flags: AgentFlags, cmd: Command) => {
      const heartbeatSeconds = Number(flags.nodeStatusUpdateFrequency);
      if (!(heartbeatSeconds > 0))
        throw new UsageError(`--node-status-update-frequency must be a positive number of seconds, not ${flags.nodeStatusUpdateFrequency}`);
      const fencingSeconds = Number(flags.fencingTimeout);
      if (!(fencingSeconds >= 0)) throw new UsageError(`--fencing-timeout must be a number of seconds (0: never), not ${flags.fencingTimeout}`);
      const probeSeconds = Number(flags.nncpProbeTimeout);
      if (!(probeSeconds > 0)) throw new UsageError(`--nncp-probe-timeout must be a positive number of seconds, not ${flags.nncpProbeTimeout}`);
      const qemuPriority = await qemuPriorityFlag(flags.qemuPriority);
      const { parseSystemReserved } = await import('@vessel/agent');
      let systemReserved;
      try {
        systemReserved = parseSystemReserved(flags.systemReserved);
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
      if (flags.netns !== undefined && flags.fabricIp === undefined)
        throw new UsageError("--netns needs --fabric-ip: the namespace holds the node's side of the cluster network");
      if (flags.fabricIp !== undefined && !/^\d{1,3}(\.\d{1,3}){3}$/.test(flags.fabricIp))
        throw new UsageError(`--fabric-ip must be an IPv4 address, not ${flags.fabricIp}`);
      if (flags.migrationTls !== 'true' && flags.migrationTls !== 'false')
        throw new UsageError(`--migration-tls must be true or false, not ${flags.migrationTls}`);
      const signalled = untilSignal();
      const client = agentClient(flags, cmd);
      const { startAgent } = await import('@vessel/agent');
      const agent = await startAgent({
        client,
        nodeName: flags.nodeName ?? hostname(),
        dataDir: flags.dataDir ?? defaultDataDir(),
        sharedDir: flags.sharedDir,
        listen: flags.listen,
        address: flags.address,
        heartbeatMs: heartbeatSeconds * 1000,
        allowLoopbackImports: !!flags.allowLoopbackImports,
        ovaRoots: flags.ovaRoot,
        qemuPriority,
        systemReserved,
        version: clientVersion(),
        log: (l) => note(`${l}\n`),
        netns: flags.netns,
        fabricIp: flags.fabricIp,
        nncpProbeTimeoutMs: probeSeconds * 1000,
        fencingTimeoutMs: fencingSeconds * 1000,
        migrationTls: flags.migrationTls === 'true',
        reservedCpus: flags.reservedCpus,
      });
      out(`Vessel agent running as node ${agent.nodeName}\n`);
      await signalled;
      note('shutting down\n');
      await agent.stop();
      client.close();
    });
}

function agentClient(flags: AgentFlags, cmd: Command): Client {
  if (!flags.server) return contextOf(cmd).client();
  if (!flags.token) throw new UsageError('--server needs --token (make one with `vessel token create`)');
  if (!flags.certificateAuthority && !flags.insecureSkipTlsVerify)
    throw new UsageError("--server needs --certificate-authority FILE (the server's DATA_DIR/pki/ca.crt) or --insecure-skip-tls-verify");
  return new Client({
    path: '',
    context: '',
    server: flags.server.replace(/\/+$/, ''),
    token: flags.token,
    namespace: 'default',
    caPem: flags.certificateAuthority ? readFileSync(flags.certificateAuthority, 'utf8') : undefined,
    insecureSkipTlsVerify: !!flags.insecureSkipTlsVerify,
  });
}
