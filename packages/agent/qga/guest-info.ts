/**
 * What the guest agent tells about the guest, in KubeVirt's shapes: the `guestosinfo`,
 * `userlist` and `filesystemlist` subresources (VirtualMachineInstanceGuestAgentInfo,
 * VirtualMachineInstanceGuestOSUserList, VirtualMachineInstanceFileSystemList) and the VMI
 * status fields virt-handler fills from it (`status.guestOSInfo`, the agent's part of
 * `status.interfaces`). The mapping from qemu-ga's JSON is pure (tested on its own); the
 * readers ask the agent over one connection each.
 */
import type {
  V1VirtualMachineInstanceFileSystem,
  V1VirtualMachineInstanceFileSystemList,
  V1VirtualMachineInstanceGuestAgentInfo,
  V1VirtualMachineInstanceGuestOSInfo,
  V1VirtualMachineInstanceGuestOSUser,
  V1VirtualMachineInstanceGuestOSUserList,
  V1VirtualMachineInstanceNetworkInterface,
} from '@kubevirt-ui-ext/kubevirt-api/kubevirt';
import { isObject } from '@vessel/api';
import { withAgent, type QgaClient } from './client.ts';

type Obj = Record<string, unknown>;
const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
const list = (v: unknown): Obj[] => (Array.isArray(v) ? v.filter(isObject) : []);
/** Leaves out the keys whose value is undefined, as Go's omitempty. */
const compact = <T extends object>(o: T): T => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;

/** The subresources served from the agent's data. */
export type GuestInfoKind = 'guestosinfo' | 'userlist' | 'filesystemlist';
export const GUEST_INFO_KINDS: readonly GuestInfoKind[] = ['guestosinfo', 'userlist', 'filesystemlist'];

/** guest-get-osinfo → VirtualMachineInstanceGuestOSInfo (the same shape as status.guestOSInfo). */
export function osInfoFromQga(r: unknown): V1VirtualMachineInstanceGuestOSInfo {
  const o = isObject(r) ? r : {};
  return compact({
    id: str(o.id),
    name: str(o.name),
    prettyName: str(o['pretty-name']),
    version: str(o.version),
    versionId: str(o['version-id']),
    kernelRelease: str(o['kernel-release']),
    kernelVersion: str(o['kernel-version']),
    machine: str(o.machine),
  });
}

/** guest-get-users → the users logged in (loginTime: seconds since the epoch, as qemu-ga gives it). */
export function usersFromQga(r: unknown): V1VirtualMachineInstanceGuestOSUser[] {
  return list(r).map((u) => compact({ userName: String(u.user ?? ''), domain: str(u.domain), loginTime: num(u['login-time']) }));
}

/** guest-get-fsinfo → the mounted disk filesystems, with the disks under each. */
export function filesystemsFromQga(r: unknown): V1VirtualMachineInstanceFileSystem[] {
  return list(r).map((f) => ({
    diskName: String(f.name ?? ''),
    mountPoint: String(f.mountpoint ?? ''),
    fileSystemType: String(f.type ?? ''),
    totalBytes: num(f['total-bytes']),
    usedBytes: num(f['used-bytes']),
    disk: list(f.disk).map((d) => compact({ busType: String(d['bus-type'] ?? ''), serial: str(d.serial) })),
  }));
}

/** guest-get-timezone → KubeVirt's "ZONE, OFFSET" (offset in seconds east of UTC). */
export function timezoneFromQga(r: unknown): string {
  const o = isObject(r) ? r : {};
  return `${str(o.zone) ?? ''}, ${num(o.offset)}`;
}

/** One interface the guest reports: its name, MAC and addresses (without the prefix). */
export interface GuestInterface {
  interfaceName: string;
  mac?: string;
  ipAddresses: string[];
}

/** guest-network-get-interfaces → the guest's interfaces, loopback and link-local addresses left out (as KubeVirt does). */
export function interfacesFromQga(r: unknown): GuestInterface[] {
  return list(r)
    .filter((i) => i.name !== 'lo')
    .map((i) => {
      const ips = list(i['ip-addresses'])
        .map((a) => String(a['ip-address'] ?? ''))
        .filter((ip) => ip !== '' && !ip.toLowerCase().startsWith('fe80:'));
      return compact({ interfaceName: String(i.name ?? ''), mac: str(i['hardware-address'])?.toLowerCase(), ipAddresses: ips });
    });
}

/**
 * status.interfaces with what the guest reports merged in: an interface the domain knows
 * (same MAC) gets the guest's name and addresses and `infoSource: domain, guest-agent`; one
 * only the guest knows is added with `infoSource: guest-agent`. When the guest does not hold
 * the address the node gave (IPAM), i.e. masquerade, where the guest has 10.0.2.2 behind the
 * pod's address, the pod's addresses stay, as KubeVirt reports the pod IPs for masquerade.
 */
export function mergeInterfaces(current: V1VirtualMachineInstanceNetworkInterface[], guest: GuestInterface[]): V1VirtualMachineInstanceNetworkInterface[] {
  const used = new Set<GuestInterface>();
  // Guest-only entries are rebuilt from what the guest says now.
  const out = current
    .filter((c) => c.infoSource !== 'guest-agent')
    .map((c) => {
      const g = guest.find((gi) => !used.has(gi) && gi.mac !== undefined && gi.mac === c.mac?.toLowerCase());
      const sources = new Set((c.infoSource ?? 'domain').split(',').map((s) => s.trim()));
      if (!g) {
        // The guest no longer reports it: back to what the domain says.
        if (!sources.has('guest-agent')) return c;
        const { interfaceName: _n, ...rest } = c;
        return { ...rest, infoSource: 'domain' };
      }
      used.add(g);
      // Masquerade: the pod's addresses stand for the guest's (which are behind the pod's NAT).
      if (c.ipAddress && !g.ipAddresses.includes(c.ipAddress)) return { ...c, interfaceName: g.interfaceName, infoSource: 'domain, guest-agent' };
      const ips = g.ipAddresses;
      return compact({ ...c, interfaceName: g.interfaceName, ipAddress: ips[0], ipAddresses: ips.length ? ips : undefined, infoSource: 'domain, guest-agent' });
    });
  for (const g of guest) {
    if (used.has(g)) continue;
    out.push(
      compact({
        interfaceName: g.interfaceName,
        mac: g.mac,
        ipAddress: g.ipAddresses[0],
        ipAddresses: g.ipAddresses.length ? g.ipAddresses : undefined,
        infoSource: 'guest-agent',
      }),
    );
  }
  return out;
}

/** The parts of VirtualMachineInstanceGuestAgentInfo, as the agent answers each command. */
export interface QgaAnswers {
  info: unknown;
  osinfo: unknown;
  hostname: unknown;
  timezone: unknown;
  users: unknown;
  fsinfo: unknown;
}

/** The `guestosinfo` subresource's answer. */
export function guestAgentInfo(a: QgaAnswers): V1VirtualMachineInstanceGuestAgentInfo {
  const info = isObject(a.info) ? a.info : {};
  return {
    kind: 'VirtualMachineInstanceGuestAgentInfo',
    apiVersion: 'kubevirt.io/v1',
    guestAgentVersion: String(info.version ?? ''),
    supportedCommands: list(info.supported_commands).map((c) => ({ name: String(c.name ?? ''), enabled: c.enabled === true })),
    hostname: String((isObject(a.hostname) ? a.hostname['host-name'] : undefined) ?? ''),
    os: osInfoFromQga(a.osinfo),
    timezone: timezoneFromQga(a.timezone),
    userList: usersFromQga(a.users),
    fsInfo: { disks: filesystemsFromQga(a.fsinfo) },
  };
}

export function userList(users: unknown): V1VirtualMachineInstanceGuestOSUserList {
  return { kind: 'VirtualMachineInstanceGuestOSUserList', apiVersion: 'kubevirt.io/v1', metadata: {}, items: usersFromQga(users) };
}

export function fileSystemList(fsinfo: unknown): V1VirtualMachineInstanceFileSystemList {
  return { kind: 'VirtualMachineInstanceFileSystemList', apiVersion: 'kubevirt.io/v1', metadata: {}, items: filesystemsFromQga(fsinfo) };
}

/** A command the guest's agent may lack or refuse (Windows has no users on some versions): absent, not an error. */
const optional = (c: QgaClient, command: string): Promise<unknown> => c.execute(command).catch(() => undefined);

/** Reads one subresource's data from the agent behind `socketPath`; throws the client's errors when the agent does not answer. */
export async function readGuestInfo(socketPath: string, kind: GuestInfoKind): Promise<object> {
  return withAgent(socketPath, async (c) => {
    switch (kind) {
      case 'userlist':
        return userList(await c.execute('guest-get-users'));
      case 'filesystemlist':
        return fileSystemList(await c.execute('guest-get-fsinfo'));
      case 'guestosinfo': {
        const info = await c.execute('guest-info');
        return guestAgentInfo({
          info,
          osinfo: await optional(c, 'guest-get-osinfo'),
          hostname: await optional(c, 'guest-get-host-name'),
          timezone: await optional(c, 'guest-get-timezone'),
          users: await optional(c, 'guest-get-users'),
          fsinfo: await optional(c, 'guest-get-fsinfo'),
        });
      }
    }
  });
}

/** What the status poller reads: the OS and the interfaces. */
export interface GuestStatus {
  guestOSInfo: V1VirtualMachineInstanceGuestOSInfo;
  interfaces: GuestInterface[];
}

/** guest-get-osinfo and guest-network-get-interfaces over one connection. */
export async function readGuestStatus(socketPath: string): Promise<GuestStatus> {
  return withAgent(
    socketPath,
    async (c) => ({
      guestOSInfo: osInfoFromQga(await optional(c, 'guest-get-osinfo')),
      interfaces: interfacesFromQga(await optional(c, 'guest-network-get-interfaces')),
    }),
    { timeoutMs: 3000 },
  );
}

/**
 * Reads the guest's status every `intervalMs` (KubeVirt's virt-handler polls on a similar
 * period) and hands it to `onStatus`, which writes only what changed. A silent agent is
 * skipped until the next round. Returns the function that stops polling.
 */
export function pollGuestStatus(socketPath: string, onStatus: (s: GuestStatus) => unknown, opts: { intervalMs?: number } = {}): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let wake: (() => void) | undefined;
  const loop = async () => {
    while (!stopped) {
      try {
        const s = await readGuestStatus(socketPath);
        if (!stopped) await onStatus(s);
      } catch {
        // no agent (yet), or the write failed: the next round tries again
      }
      await new Promise<void>((resolve) => {
        wake = resolve;
        timer = setTimeout(resolve, opts.intervalMs ?? 10_000);
      });
    }
  };
  void loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
    wake?.();
  };
}
