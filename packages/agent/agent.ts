/**
 * `vessel agent`: one per host. Registers the Node, serves the storage pools of this host
 * (`local` under the data directory, `shared` in a directory every node sees), fills and
 * deletes the volumes bound to it, and answers the API server on its own HTTPS endpoint.
 */
import { join } from 'node:path';
import { forklift, storage, refs } from '@vessel/api';
import { isNotFound, type Client } from '@vessel/client';
import type { KubeObject } from '@vessel/runtime';
import { ensureSelfSignedCert, MigrationCa, parseListen, writeQemuTlsSet, type MigrationCertLifetimes, type MigrationCerts } from '@vessel/tls';
import { consoleHandlers } from './console.ts';
import { portForwardHandler } from './portforward.ts';
import { clusterAddressOf } from './vms/prepare.ts';
import { startEndpoint, type AgentEndpoint } from './endpoint.ts';
import { DEFAULT_HEARTBEAT_MS, NodeRegistration, type SystemReserved } from './node.ts';
import { Watchdog, watchdogTimeoutMs, type WatchdogTerms } from './watchdog.ts';
import { askPeer, DEFAULT_FENCING_TIMEOUT_MS, Fencer, FENCING_TIMEOUT_ANNOTATION, listNodes, NetnsProber, peerNodes, runFencer, within } from './fencing.ts';
import { agentEgressPolicy } from './storage/egress.ts';
import { PathError, Pool } from './storage/pools.ts';
import { RestoreController } from './snapshots/restores.ts';
import { SnapshotController } from './snapshots/snapshots.ts';
import { ConversionController, virtV2vVersion } from './storage/convert.ts';
import { WarmController } from './vms/warm-controller.ts';
import { VolumeManager } from './storage/volumes.ts';
import { detectAccelerator, type Accelerator } from './vms/accel.ts';
import { VmRuntime, vmsRootOf } from './vms/runtime.ts';
import { ClusterNetwork, FABRIC_IP_ANNOTATION, networkStateDir } from './network/cluster.ts';
import { NetworkError } from './network/errors.ts';
import { checkNetns } from './network/exec.ts';
import { PolicyEnforcer } from './network/policy.ts';
import { ServiceProxy } from './network/services.ts';
import { NetworkConfigurator } from './network/nmstate.ts';
import { SecondaryNetworks } from './network/secondary.ts';
import { DEFAULT_QEMU_PRIORITY, resolveQemuPriority, type QemuPriority } from './qemu/priority.ts';
import { CpuManager, formatCpuList, hostCpus, nodeExtendedResources, parseCpuList } from './vms/cpu-manager.ts';
import { streamVolume } from './storage/export.ts';
import { HttpError } from '@vessel/http';

export interface AgentOptions {
  client: Client;
  nodeName: string;
  dataDir: string;
  /** The shared pool's directory (the same path on every node); default DATA_DIR/pools/shared. */
  sharedDir?: string;
  /** Endpoint address to listen on (default 127.0.0.1:0) and the address the server should use. */
  listen?: string;
  address?: string;
  version?: string;
  heartbeatMs?: number;
  /** What the Node keeps out of status.allocatable (`--system-reserved`; default node.ts DEFAULT_SYSTEM_RESERVED). */
  systemReserved?: SystemReserved;
  log?: (line: string) => void;
  /**
   * Let http and registry imports (and containerDisk pulls) fetch from loopback addresses
   * (`--allow-loopback-imports`): for labs and tests only, since every tenant could then read
   * services that listen on this host's loopback. Link-local, this node's and the API
   * server's addresses stay refused.
   */
  allowLoopbackImports?: boolean;
  /** Directories of OVA packages (`--ova-root`, as the server's) whose disks a Forklift migration's DataVolume is filled from in place. */
  ovaRoots?: readonly string[];
  /**
   * Loopback address and port pairs imports may fetch from even without allowLoopbackImports:
   * the read-only registry `vessel up` serves the tiny golden image from, and nothing else.
   */
  allowedImportSources?: readonly { address: string; port: number }[];
  /**
   * How QEMU runs below the agent, server and controllers (`--qemu-priority`, qemu/priority.ts):
   * default nice 10 + SCHED_BATCH, and a cgroup per VM where cgroup v2 is delegated.
   */
  qemuPriority?: QemuPriority;
  /**
   * The node's network namespace (`--netns`, made with `ip netns add`): the dev cluster's
   * stand-in for a host. The cluster network's bridge, taps, dnsmasq and nftables, and every
   * QEMU, live there; the agent itself stays in its own namespace. Default: its own.
   */
  netns?: string;
  /**
   * This node's address on the fabric (`--fabric-ip`). With it the agent runs the node's side of
   * the cluster network (docs/network.md) and publishes it on the Node (vessel.io/fabric-ip);
   * without it every VM NIC stays on QEMU user networking.
   */
  fabricIp?: string;
  /**
   * NodeNetworkConfigurationPolicy: how long connectivity may stay broken after an apply before
   * the agent rolls it back (`--nncp-probe-timeout`; default 120 s, as kubernetes-nmstate).
   */
  nncpProbeTimeoutMs?: number;
  /**
   * Host CPUs kept for the system (`--reserved-cpus`, a CPU list such as "0"): with it the node
   * has a CPU manager whose exclusive pool (the other CPUs) runs dedicatedCpuPlacement VMs.
   */
  reservedCpus?: string;
  /**
   * TLS on live migration streams (default true, as KubeVirt; `--migration-tls=false` turns it
   * off): every agent of a cluster must agree, or its migrations fail.
   */
  migrationTls?: boolean;
  /**
   * The migration CA's and leaf's lifetimes, renewal point and overlap (@vessel/tls
   * MigrationCa; default KubeVirt's: CA 7 days, leaf 24 h, renewed at 80%). Env
   * VESSEL_MIGRATION_CA_SECONDS, VESSEL_MIGRATION_LEAF_SECONDS, VESSEL_MIGRATION_CERT_OVERLAP_SECONDS
   * set them too (tests); these options win.
   */
  migrationCertLifetimes?: Partial<MigrationCertLifetimes>;
  /**
   * Self-fencing (fencing.ts, `--fencing-timeout`): how long the agent may reach neither the API
   * server nor a quorum of its peers before it kills its QEMUs (default 8 s; 0: never).
   */
  fencingTimeoutMs?: number;
  /**
   * Dev cluster: the address inside the node's namespace that stands for the way to the control
   * plane (the fabric's outside address); when it stops answering the API server counts as
   * unreachable, as for a host whose link was cut.
   */
  controlPlaneVia?: string;
}

export interface RunningAgent {
  nodeName: string;
  dataDir: string;
  pools: Map<string, Pool>;
  endpoint: AgentEndpoint;
  vms: VmRuntime;
  accel: Accelerator;
  /** The node's cluster network, when started with a fabric IP. */
  network?: ClusterNetwork;
  stop(): Promise<void>;
}

export async function startAgent(opts: AgentOptions): Promise<RunningAgent> {
  const log = opts.log ?? (() => {});
  const pools = new Map<string, Pool>([
    ['local', new Pool('local', join(opts.dataDir, 'pools', 'local'), false)],
    ['shared', new Pool('shared', opts.sharedDir ?? join(opts.dataDir, 'pools', 'shared'), true)],
  ]);
  for (const p of pools.values()) await p.init();
  const fencingMs = opts.fencingTimeoutMs ?? DEFAULT_FENCING_TIMEOUT_MS;
  const heartbeatMs = opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
  // The watchdog first, with the terms a previous agent left: a restart renews the lease before
  // anything slow, and pets on its own until the fencing checks take over.
  const watchdog = fencingMs > 0 ? new Watchdog(opts.dataDir, vmsRootOf(opts.dataDir), log) : undefined;
  await watchdog?.start({ timeoutMs: watchdogTimeoutMs({ heartbeatMs, fencingMs }), armed: false });
  const startupPets = watchdog && setInterval(() => void watchdog.pet().catch(() => undefined), 1000);
  try {
    return await startAgentWith(opts, log, pools, watchdog, fencingMs, heartbeatMs);
  } finally {
    clearInterval(startupPets);
  }
}

async function startAgentWith(
  opts: AgentOptions,
  log: (line: string) => void,
  pools: Map<string, Pool>,
  watchdog: Watchdog | undefined,
  fencingMs: number,
  heartbeatMs: number,
): Promise<RunningAgent> {
  const token = await agentToken(opts.client);
  const cert = await ensureSelfSignedCert(join(opts.dataDir, 'agent'), 'agent', `vessel-agent:${opts.nodeName}`);
  // Renewed at start if expired or not yet valid, then rotated on a timer once the Node is registered.
  const migrationTls =
    opts.migrationTls === false
      ? undefined
      : await MigrationCa.open({
          dir: join(opts.dataDir, 'migration-ca'),
          nodeName: opts.nodeName,
          lifetimes: { ...migrationLifetimesFromEnv(process.env), ...opts.migrationCertLifetimes },
          log,
          publish: async (bundle) =>
            void (await opts.client.patch(refs.NODES, opts.nodeName, { metadata: { annotations: { [storage.NODE_MIGRATION_CA]: bundle } } })),
        });
  const accel = await detectAccelerator();
  const virtV2v = await virtV2vVersion();
  const egress = await agentEgressPolicy({
    allowLoopback: !!opts.allowLoopbackImports,
    apiServerUrl: opts.client.config.server,
    allowed: opts.allowedImportSources,
  });
  if (opts.allowLoopbackImports) log('agent: imports may fetch from loopback addresses (--allow-loopback-imports): for labs and tests only');
  const priority = await resolveQemuPriority(opts.qemuPriority ?? DEFAULT_QEMU_PRIORITY, log);
  const cpuManager = opts.reservedCpus === undefined ? undefined : new CpuManager(await hostCpus(), parseCpuList(opts.reservedCpus));
  if (cpuManager) log(`agent: CPU manager: CPUs ${formatCpuList(cpuManager.reserved)} reserved, ${formatCpuList(cpuManager.pool) || 'none'} dedicated`);
  if (opts.netns !== undefined && opts.fabricIp === undefined)
    throw new NetworkError('InvalidArgument', "--netns needs --fabric-ip: the namespace holds the node's cluster network");
  const network =
    opts.fabricIp === undefined
      ? undefined
      : new ClusterNetwork(opts.client, {
          nodeName: opts.nodeName,
          netns: opts.netns === undefined ? undefined : checkNetns(opts.netns),
          fabricIp: opts.fabricIp,
          stateDir: networkStateDir(opts.dataDir),
          log,
        });
  // NetworkPolicy is enforced wherever the node has a cluster network (its taps).
  const policies = network && new PolicyEnforcer(opts.client, { nodeName: opts.nodeName, netns: network.netns, nodeAddress: () => network.gateway()?.ip, log });
  // Services' data plane (DNAT, DNS names) on every node of the cluster network.
  const services = network && new ServiceProxy(opts.client, { netns: network.netns, stateDir: networkStateDir(opts.dataDir), log });
  // Node network configuration (nmstate.io policies) in the node's namespace, or the host's.
  const nmstateCtl = new NetworkConfigurator(opts.client, { nodeName: opts.nodeName, netns: network?.netns, probeTimeoutMs: opts.nncpProbeTimeoutMs, log });
  // Secondary networks (NetworkAttachmentDefinitions) live beside the cluster network, in the node's namespace.
  const secondary = network && new SecondaryNetworks(opts.client, { netns: network.netns, log });
  const vms = new VmRuntime(opts.client, {
    nodeName: opts.nodeName,
    dataDir: opts.dataDir,
    accel,
    pools,
    log,
    egress,
    priority,
    network,
    secondary,
    migrationAddress: opts.fabricIp,
    cpuManager,
    migrationTlsDir: migrationTls && ((peer) => writeMigrationTlsDir(opts.client, join(opts.dataDir, 'migration-tls', peer), migrationTls.current(), peer)),
    policyCovers: policies && ((vmi) => policies.covers(vmi.metadata.namespace ?? '', vmi.metadata.name)),
  });
  // The volume manager grows the disks of running VMs through their QEMU (held like any VM action).
  const volumes = new VolumeManager(opts.client, { nodeName: opts.nodeName, pools, log, live: vms, egress, ovaRoots: opts.ovaRoots });
  const snapshots = new SnapshotController(opts.client, { nodeName: opts.nodeName, pools, vms, log });
  const restores = new RestoreController(opts.client, { nodeName: opts.nodeName, pools, vms, log });
  const conversions = new ConversionController(opts.client, { nodeName: opts.nodeName, pools, version: virtV2v, tcg: accel === 'tcg', log });
  const warm = new WarmController(opts.client, {
    nodeName: opts.nodeName,
    pools,
    vms,
    listenAddress: opts.fabricIp ?? '127.0.0.1',
    netns: network?.netns,
    log,
  });
  const { host, port } = parseListen(opts.listen ?? '127.0.0.1:0');
  const consoles = consoleHandlers({ runDirFor: (ns, name) => vms.runDirFor(ns, name), log });
  // A guest on the cluster network is dialled at its address inside the node's namespace; one on
  // QEMU user networking (no address in its status) through a temporary slirp forward.
  const portForward = portForwardHandler({
    vmiFor: (ns, name) => vms.vmiOnNode(ns, name),
    qmpFor: (ns, name) => vms.qmpFor(ns, name),
    guestAddress: network ? (vmi) => clusterAddressOf(vmi, network) : undefined,
    netns: opts.netns,
    log,
  });
  const endpoint = await startEndpoint({
    host,
    port,
    certPem: cert.certPem,
    keyPem: cert.keyPem,
    token,
    volumes,
    vms,
    consoles,
    portForward,
    exportVolume: async (namespace, path, format, res, signal) => {
      let file: string;
      try {
        file = volumes.exportPath(namespace, path);
      } catch (e) {
        // Its message names host paths: the answer (which a tenant may read) does not.
        if (e instanceof PathError) throw new HttpError(404, `the exported volume is not in namespace ${namespace}'s directory of this node's pools`);
        throw e;
      }
      await streamVolume(file, format, res, { signal });
    },
    log,
    nodeName: opts.nodeName,
    apiReachable: () => fencer?.apiOk ?? true,
  });
  const prober = fencingMs > 0 && opts.netns !== undefined ? new NetnsProber(opts.netns) : undefined;
  let known: KubeObject[] = [];
  // When the control plane restarts this node's VMs elsewhere (its Node says), for the watchdog.
  let failoverAfterMs: number | undefined;
  const watchdogTerms = (): WatchdogTerms => ({
    timeoutMs: watchdogTimeoutMs({ failoverAfterMs, heartbeatMs, fencingMs }),
    armed: peerNodes(known, opts.nodeName).length > 0,
  });
  const fencer =
    fencingMs > 0
      ? new Fencer({
          timeoutMs: fencingMs,
          log,
          apiReachable: async () => {
            const [api, path] = await Promise.all([
              within(
                opts.client.get(refs.NODES, opts.nodeName).then((n) => {
                  failoverAfterMs = Number(n.metadata?.annotations?.[storage.NODE_FAILOVER_AFTER] ?? NaN) * 1000 || undefined;
                  return true;
                }),
                2000,
                false,
              ),
              prober && opts.controlPlaneVia ? prober.reachable(opts.controlPlaneVia, 6443, 1500) : true,
            ]);
            // The peers as the API server knows them, for when it is gone.
            if (api && path) known = (await listNodes(opts.client, 2000)) ?? known;
            return api && path;
          },
          peers: () =>
            peerNodes(known, opts.nodeName).map((n) => ({
              name: n.metadata.name,
              check: async () => {
                const fabric = n.metadata.annotations?.[FABRIC_IP_ANNOTATION];
                if (prober && fabric && !(await prober.reachable(fabric, 9, 1500))) return 'unreachable';
                return askPeer(n, token, 1500);
              },
            })),
          fence: (reason) => vms.fence(reason),
          recovered: async (reason, at) => {
            vms.unfence();
            await node.recordFence(reason, at);
          },
        })
      : undefined;
  const nodePools: Record<string, storage.NodePool> = Object.fromEntries([...pools.values()].map((p) => [p.name, { dir: p.dir, shared: p.shared }]));
  const node = new NodeRegistration(opts.client, {
    nodeName: opts.nodeName,
    address: opts.address ?? (host === '0.0.0.0' ? '127.0.0.1' : host),
    port: endpoint.port,
    certFingerprint256: cert.fingerprint256,
    certPem: cert.certPem,
    pools: nodePools,
    version: opts.version ?? 'dev',
    heartbeatMs: opts.heartbeatMs,
    systemReserved: opts.systemReserved,
    connected: fencer && (() => fencer.apiOk),
    log,
    labels: { 'vessel.io/accelerator': accel, cpumanager: String(!!cpuManager), ...(virtV2v ? { [forklift.NODE_VIRT_V2V]: virtV2v } : {}) },
    extendedResources: () => nodeExtendedResources(cpuManager),
    annotations: {
      ...(opts.fabricIp === undefined ? {} : { [FABRIC_IP_ANNOTATION]: opts.fabricIp }),
      ...(migrationTls ? { [storage.NODE_MIGRATION_CA]: migrationTls.bundle() } : {}),
      // What the control plane waits for before it restarts this node's VMs elsewhere.
      ...(fencer ? { [FENCING_TIMEOUT_ANNOTATION]: String(fencingMs / 1000) } : {}),
    },
  });
  let fencing: { stop(): void } | undefined;
  try {
    await node.start();
    await volumes.start();
    // The bridge must exist before a VM is re-adopted or started onto it.
    await network?.start();
    await policies?.start();
    await services?.start();
    await nmstateCtl.start();
    await secondary?.start();
    await vms.start();
    await snapshots.start();
    await restores.start();
    await conversions.start();
    await warm.start();
    migrationTls?.start();
    fencing = fencer && runFencer(fencer, 1000, log, async () => watchdog?.pet(watchdogTerms()));
  } catch (e) {
    prober?.close();
    node.stop();
    await policies?.stop().catch(() => undefined);
    await services?.stop().catch(() => undefined);
    await nmstateCtl.stop().catch(() => undefined);
    await secondary?.stop().catch(() => undefined);
    await network?.stop().catch(() => undefined);
    await endpoint.close();
    throw e;
  }
  log(
    `agent: node ${opts.nodeName} registered (${accel}); endpoint on ${host}:${endpoint.port}${network ? `; cluster network from fabric ${opts.fabricIp}${opts.netns ? ` in netns ${opts.netns}` : ''}` : ''}`,
  );
  return {
    nodeName: opts.nodeName,
    dataDir: opts.dataDir,
    pools,
    endpoint,
    vms,
    accel,
    network,
    async stop() {
      fencing?.stop();
      prober?.close();
      node.stop();
      await migrationTls?.stop();
      await conversions.stop();
      await warm.stop();
      await restores.stop();
      await snapshots.stop();
      await vms.stop();
      // dnsmasq, the taps and the policy table stay, like the QEMUs: the guests keep their network and its isolation.
      await policies?.stop();
      // dnsmasq and the taps stay, like the QEMUs: the guests keep their network.
      await services?.stop();
      await nmstateCtl.stop();
      await secondary?.stop();
      await network?.stop();
      await volumes.stop();
      consoles.close(); // open consoles would keep the endpoint from closing
      portForward.close();
      await endpoint.close();
    },
  };
}

/** The token the API server presents to agents (kube-system/vessel-agent-auth), made by the server on first start. */
async function agentToken(client: Client): Promise<string> {
  for (let i = 0; ; i++) {
    try {
      const s = await client.get(refs.SECRETS, storage.AGENT_AUTH_SECRET, { namespace: 'kube-system' });
      const t = (s.data as Record<string, string> | undefined)?.token;
      if (t) return Buffer.from(t, 'base64').toString('utf8');
    } catch (e) {
      if (!isNotFound(e) || i > 50) throw e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Lifetimes of the migration certificates from the environment (seconds; tests shorten them). */
function migrationLifetimesFromEnv(env: NodeJS.ProcessEnv): Partial<MigrationCertLifetimes> {
  const ms = (name: string) => {
    const v = env[name];
    if (v === undefined || v === '') return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number of seconds, not ${v}`);
    return n * 1000;
  };
  const caMs = ms('VESSEL_MIGRATION_CA_SECONDS'),
    leafMs = ms('VESSEL_MIGRATION_LEAF_SECONDS'),
    overlapMs = ms('VESSEL_MIGRATION_CERT_OVERLAP_SECONDS');
  // Short lifetimes are checked as often as their steps fall due, not hourly.
  const checkMs = caMs !== undefined || leafMs !== undefined ? Math.min(caMs ?? Infinity, leafMs ?? Infinity) / 10 : undefined;
  return { caMs, leafMs, overlapMs, checkMs };
}

/**
 * QEMU's tls-creds-x509 directory for a migration with `peer`: ca-cert.pem holds this node's
 * migration CA bundle (QEMU checks its own certificate against it) and the peer's, read from the
 * peer's Node now; the one leaf serves as server and client certificate. A set of its own per
 * content (writeQemuTlsSet): a rotation, or another migration with the same peer, never changes
 * files a QEMU is about to read at object-add.
 */
async function writeMigrationTlsDir(client: Client, peerDir: string, own: MigrationCerts, peer: string): Promise<string> {
  const node = (await client.get(refs.NODES, peer)) as KubeObject;
  const peerCa = node.metadata.annotations?.[storage.NODE_MIGRATION_CA];
  if (!peerCa) throw new Error(`node ${peer} publishes no migration CA (${storage.NODE_MIGRATION_CA}): is its agent running with --migration-tls=false?`);
  const leaf = { cert: own.certPem, key: own.keyPem };
  return writeQemuTlsSet(peerDir, { type: 'x509', caCert: own.caPem + peerCa, server: leaf, client: leaf });
}
