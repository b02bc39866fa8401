/**
 * dnsmasq on the VM bridge: DHCP with static leases for this node's VMs only (one file per NIC
 * in a --dhcp-hostsdir, which dnsmasq watches), router and DNS = the node's gateway, MTU 1450.
 * A VM on another node also sees this node's dnsmasq (one L2 segment): without a lease for its
 * MAC, and not authoritative, this one stays silent and leaves it to its own node's.
 *
 * It runs as a daemon that outlives the agent, like QEMU: a restarted agent adopts the one its
 * pid file names when it runs with the same arguments, and replaces it otherwise.
 */
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BRIDGE, VM_MTU } from './bridge.ts';
import { NetworkError } from './errors.ts';
import { inNs, type NetNs } from './exec.ts';
import { formatIPv4, parseCidr, parseIPv4 } from '@vessel/api';

export interface DnsmasqConfig {
  /** The node's gateway address on the VM network (no prefix). */
  gateway: string;
  /** The VM network, e.g. 10.244.0.0/16. */
  cidr: string;
  mtu?: number;
}

export interface DhcpHost {
  mac: string;
  ip: string;
  hostname?: string;
}

/**
 * The search list (DHCP option 119) every guest gets. Kubernetes puts `<ns>.svc.cluster.local`
 * first; that needs per-namespace options from a --dhcp-optsdir, and dnsmasq 2.90 segfaults
 * after a SIGHUP with one in use (seen in the e2e), so a guest uses `name.ns` (or the full name).
 */
export const SEARCH_DOMAINS = ['svc.cluster.local', 'cluster.local'];

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const HOST_RE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const FILE_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export class Dnsmasq {
  readonly hostsDir: string;
  readonly pidFile: string;
  readonly logFile: string;
  /** DNS names of Services and VMs (written by services.ts; re-read on SIGHUP). */
  readonly dnsHostsFile: string;
  private config?: DnsmasqConfig;

  /** `dir`: this node's dnsmasq state (pid file, log, hosts/). */
  constructor(
    private readonly ns: NetNs,
    private readonly dir: string,
    private readonly log: (line: string) => void = () => {},
  ) {
    this.hostsDir = join(dir, 'hosts');
    this.pidFile = join(dir, 'dnsmasq.pid');
    this.logFile = join(dir, 'dnsmasq.log');
    this.dnsHostsFile = join(dir, 'dns-hosts');
  }

  /** The daemon's arguments (after the binary). Pure apart from the paths. */
  args(c: DnsmasqConfig): string[] {
    const net = parseCidr(c.cidr);
    if (!net || parseIPv4(c.gateway) === undefined)
      throw new NetworkError('InvalidArgument', `dnsmasq: bad gateway ${JSON.stringify(c.gateway)} or network ${JSON.stringify(c.cidr)}`);
    return [
      '--conf-file=/dev/null', // not the host's /etc/dnsmasq.conf
      '--no-hosts',
      `--interface=${BRIDGE}`,
      '--except-interface=lo', // a real host's loopback :53 is someone else's
      '--bind-dynamic',
      `--dhcp-range=${formatIPv4(net.base)},static,${formatIPv4(2 ** 32 - net.size)},12h`,
      `--dhcp-hostsdir=${this.hostsDir}`,
      `--dhcp-option=option:router,${c.gateway}`,
      `--dhcp-option=option:dns-server,${c.gateway}`,
      `--dhcp-option=option:mtu,${c.mtu ?? VM_MTU}`,
      '--local=/cluster.local/',
      '--local=/svc/', // name.ns.svc: answered here or not at all
      `--addn-hosts=${this.dnsHostsFile}`,
      `--dhcp-option=option:domain-search,${SEARCH_DOMAINS.join(',')}`,
      '--leasefile-ro',
      `--pid-file=${this.pidFile}`,
      `--log-facility=${this.logFile}`,
      '--log-dhcp',
      // Its hosts directory and log sit in the agent's private data directory, which an
      // unprivileged user could not read; it serves only the VM bridge.
      '--user=root',
    ];
  }

  /** Starts dnsmasq for `c`, or adopts the running one when its arguments are the same. */
  async ensure(c: DnsmasqConfig): Promise<void> {
    const args = this.args(c);
    await mkdir(this.hostsDir, { recursive: true, mode: 0o750 });
    if (
      !(await readFile(this.dnsHostsFile, 'utf8').then(
        () => true,
        () => false,
      ))
    )
      await writeFile(this.dnsHostsFile, '');
    const pid = await this.pid();
    if (pid !== undefined) {
      const running = await cmdline(pid);
      if (running && JSON.stringify(running.slice(1)) === JSON.stringify(args)) {
        if (!this.config) this.log(`network: adopted dnsmasq (pid ${pid})`);
        this.config = c;
        return;
      }
      this.log(`network: restarting dnsmasq (pid ${pid}): its configuration changed`);
      await this.stop();
    }
    await inNs(this.ns, ['dnsmasq', ...args], { timeoutMs: 10_000 });
    const started = await this.pid();
    if (started === undefined) throw new NetworkError('DnsmasqFailed', `dnsmasq started but wrote no pid file ${this.pidFile}: see ${this.logFile}`);
    this.config = c;
    this.log(`network: dnsmasq (pid ${started}) serves DHCP on ${BRIDGE}, gateway ${c.gateway}`);
  }

  /** The pid of our running dnsmasq (pid file + a live dnsmasq process with our pid file), or undefined. */
  async pid(): Promise<number | undefined> {
    const pid = Number.parseInt((await readFile(this.pidFile, 'utf8').catch(() => '')).trim(), 10);
    if (!Number.isSafeInteger(pid) || pid <= 1) return undefined;
    const args = await cmdline(pid);
    return args && args.includes(`--pid-file=${this.pidFile}`) ? pid : undefined;
  }

  /** Writes (or replaces) the static lease of one NIC; dnsmasq sees the file appear. */
  async setHost(id: string, h: DhcpHost): Promise<void> {
    if (!FILE_RE.test(id) || !MAC_RE.test(h.mac) || parseIPv4(h.ip) === undefined || (h.hostname !== undefined && !HOST_RE.test(h.hostname))) {
      throw new NetworkError('InvalidArgument', `dnsmasq: bad static lease ${JSON.stringify({ id, ...h })}`);
    }
    await mkdir(this.hostsDir, { recursive: true, mode: 0o750 });
    const line = [h.mac, h.ip, ...(h.hostname ? [h.hostname] : [])].join(',') + '\n';
    const file = join(this.hostsDir, id);
    if ((await readFile(file, 'utf8').catch(() => '')) === line) return;
    // dnsmasq skips dot files, so it reads the lease only once it is complete.
    const tmp = join(this.hostsDir, `.${id}.tmp`);
    await writeFile(tmp, line);
    await rename(tmp, file);
  }

  /** Replaces the DNS names dnsmasq answers from its hosts file (`/etc/hosts` lines) and makes it re-read them. */
  async setDnsHosts(text: string): Promise<boolean> {
    if ((await readFile(this.dnsHostsFile, 'utf8').catch(() => undefined)) === text) return false;
    await mkdir(this.dir, { recursive: true, mode: 0o750 });
    const tmp = `${this.dnsHostsFile}.tmp`;
    await writeFile(tmp, text);
    await rename(tmp, this.dnsHostsFile);
    await this.hangup();
    return true;
  }

  /** Drops a NIC's lease; dnsmasq forgets removed files only when it re-reads (SIGHUP). */
  async removeHost(id: string): Promise<void> {
    if (!FILE_RE.test(id)) return;
    const file = join(this.hostsDir, id);
    const had = await readFile(file, 'utf8').then(
      () => true,
      () => false,
    );
    await rm(file, { force: true });
    if (had) await this.hangup();
  }

  async hosts(): Promise<string[]> {
    return (await readdir(this.hostsDir).catch(() => [] as string[])).filter((f) => !f.startsWith('.'));
  }

  private async hangup(): Promise<void> {
    const pid = await this.pid();
    if (pid !== undefined)
      try {
        process.kill(pid, 'SIGHUP');
      } catch {
        /* gone */
      }
  }

  /** Ends our dnsmasq (the agent keeps it running when it stops; this is for a changed configuration). */
  async stop(): Promise<void> {
    const pid = await this.pid();
    if (pid === undefined) return;
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      return;
    }
    // By its state, not its cmdline: an exiting process loses its cmdline before its sockets.
    for (let i = 0; i < 250 && (await alive(pid)); i++) await new Promise((r) => setTimeout(r, 20));
    await rm(this.pidFile, { force: true });
  }
}

/** Whether `pid` runs (not a zombie). */
export async function alive(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return !!stat && !/\) [ZX] /.test(stat);
}

/** A live process's argv (dnsmasq's, to adopt it), or undefined. */
export async function cmdline(pid: number): Promise<string[] | undefined> {
  if (!(await alive(pid))) return undefined;
  const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return raw ? raw.split('\0').filter((a, i, all) => a !== '' || i < all.length - 1) : undefined;
}
