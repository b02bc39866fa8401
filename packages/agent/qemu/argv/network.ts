/**
 * Networks and interfaces: spec.networks (pod or multus) matched to the interfaces by name, each
 * interface a -netdev on the backend the agent chose (user-mode slirp or a tap on the cluster
 * bridge) and a NIC device with a stable MAC.
 */
import { VM_NETWORK_CIDR_PROBLEM, macAddressProblem, parseVmNetworkCidr } from '@vessel/api';
import type { HostForward, QemuNetwork } from '../argv.ts';
import {
  checkName,
  claimId,
  forEachNamed,
  isObj,
  isSet,
  opt,
  readBool,
  readBootOrder,
  readInt,
  readList,
  readObj,
  readStr,
  supportedStrings,
  virtio,
  type Configurator,
  type Ctx,
  type Obj,
} from './context.ts';
import { derivedMac, deviceId, netdevId } from './ids.ts';

const PORT_PROTOCOLS = supportedStrings('domain.devices.interfaces[].ports[].protocol');

interface Network {
  index: number;
  kind: 'pod' | 'multus';
  cidr?: string;
}

interface HostPort {
  proto: string;
  port: number;
}

/** An interface whose spec is valid, ready for its backend. */
interface Nic {
  name: string;
  path: string;
  net: Network;
  modelName: string;
  model: string;
  ports: HostPort[];
  mac?: string;
  bootOrder?: number;
}

export const network: Configurator = (ctx) => {
  const { c, devices } = ctx;
  const networks = readNetworks(ctx);
  const multiqueue = readBool(devices.networkInterfaceMultiqueue, 'spec.domain.devices.networkInterfaceMultiqueue', c) === true;
  const models: Record<string, string> = {
    virtio: virtio(ctx, 'virtio-net-pci'),
    e1000: 'e1000',
    e1000e: 'e1000e',
    igb: 'igb',
    ne2k_pci: 'ne2k_pci',
    pcnet: 'pcnet',
    rtl8139: 'rtl8139',
  };
  const hostname = guestHostname(ctx);
  const interfaces = readList(devices.interfaces, 'spec.domain.devices.interfaces', c);
  const ifaceNames = new Set(interfaces.map((i) => (isObj(i) ? i.name : undefined)).filter((n): n is string => typeof n === 'string'));
  for (const [nname, n] of networks) {
    if (!ifaceNames.has(nname)) c.invalid(`spec.networks[${n.index}].name`, nname, 'no interface of this name in spec.domain.devices.interfaces');
  }
  interfaces.forEach((itf, i) => {
    const nic = readInterface(ctx, itf, `spec.domain.devices.interfaces[${i}]`, networks, models);
    if (nic) attachNic(ctx, nic, hostname, multiqueue);
  });
};

function readNetworks(ctx: Ctx): Map<string, Network> {
  const { c } = ctx;
  const networks = new Map<string, Network>();
  forEachNamed(c, ctx.spec.networks, 'spec.networks', 'the network name', networks, (o, nname, path, j) => {
    const pod = readObj(o.pod, `${path}.pod`, c);
    const multus = readObj(o.multus, `${path}.multus`, c);
    if ((pod ? 1 : 0) + (multus ? 1 : 0) !== 1) return c.invalid(path, nname, 'exactly one of pod or multus must be set');
    if (multus) {
      const nad = readStr(multus.networkName, `${path}.multus.networkName`, c);
      if (!nad) c.required(`${path}.multus.networkName`, 'the NetworkAttachmentDefinition name');
      readBool(multus.default, `${path}.multus.default`, c);
    }
    const cidr = pod ? readStr(pod.vmNetworkCIDR, `${path}.pod.vmNetworkCIDR`, c) : undefined;
    networks.set(nname, { index: j, kind: pod ? 'pod' : 'multus', cidr });
  });
  return networks;
}

/** Checks one interface; returns it when it has a network and a model (causes say the rest). */
function readInterface(ctx: Ctx, itf: unknown, path: string, networks: Map<string, Network>, models: Record<string, string>): Nic | undefined {
  const { c } = ctx;
  const o = readObj(itf, path, c);
  if (!o) return undefined;
  const name = checkName(c, readStr(o.name, `${path}.name`, c), `${path}.name`, 'the interface name', true);
  if (name === undefined) return undefined;
  claimId(ctx, deviceId(name), `${path}.name`, name);
  const net = networks.get(name);
  if (!net) c.invalid(`${path}.name`, name, 'no network of this name in spec.networks');
  const masquerade = readObj(o.masquerade, `${path}.masquerade`, c);
  const bridge = readObj(o.bridge, `${path}.bridge`, c);
  if (!masquerade && !bridge && !unsupportedBinding(o)) c.required(path, 'a binding method: masquerade or bridge');
  if (masquerade && bridge) c.invalid(path, name, 'set only one binding method');
  if (masquerade && net?.kind === 'multus') c.invalid(`${path}.masquerade`, {}, 'masquerade is only allowed on the pod network');
  const modelName = readStr(o.model, `${path}.model`, c) ?? 'virtio';
  const model = models[modelName];
  if (!model) c.value(`${path}.model`, modelName, Object.keys(models));
  const ports = readPorts(ctx, o, path);
  const macSpec = readStr(o.macAddress, `${path}.macAddress`, c);
  let mac: string | undefined;
  if (macSpec !== undefined) {
    const problem = macAddressProblem(macSpec);
    if (problem) c.invalid(`${path}.macAddress`, macSpec, problem);
    else mac = macSpec.toLowerCase().replaceAll('-', ':');
  }
  const bootOrder = readBootOrder(ctx, o.bootOrder, `${path}.bootOrder`);
  if (!net || !model) return undefined;
  return { name, path, net, modelName, model, ports, mac, bootOrder };
}

function readPorts(ctx: Ctx, o: Obj, path: string): HostPort[] {
  const { c } = ctx;
  const ports: HostPort[] = [];
  readList(o.ports, `${path}.ports`, c).forEach((p, k) => {
    const pp = readObj(p, `${path}.ports[${k}]`, c);
    if (!pp) return;
    const port = readInt(pp.port, `${path}.ports[${k}].port`, c, 1, 65535);
    const proto = readStr(pp.protocol, `${path}.ports[${k}].protocol`, c) ?? 'TCP';
    readStr(pp.name, `${path}.ports[${k}].name`, c);
    if (!PORT_PROTOCOLS.includes(proto)) c.value(`${path}.ports[${k}].protocol`, proto, PORT_PROTOCOLS);
    if (port !== undefined) ports.push({ proto, port });
  });
  return ports;
}

/** The interface's -netdev on the agent's backend, then its NIC. */
function attachNic(ctx: Ctx, nic: Nic, hostname: string, multiqueue: boolean): void {
  const { c, input } = ctx;
  const backend = input.networks?.[nic.name];
  if (!backend) return c.required(nic.path, `the agent has no network backend for interface ${nic.name}`);
  const id = netdevId(nic.name);
  const queues = multiqueue && nic.modelName === 'virtio' && backend.kind === 'tap' && ctx.vcpus > 1 ? ctx.vcpus : undefined;
  ctx.args.devices.push('-netdev', netdev(ctx, nic, backend, id, hostname, multiqueue, queues));
  const mac = nic.mac ?? backend.mac?.toLowerCase() ?? derivedMac(input.vmi.metadata.namespace, input.vmi.metadata.name, nic.name);
  ctx.args.devices.push(
    '-device',
    opt(nic.model, [
      ['netdev', id],
      ['id', deviceId(nic.name)],
      ['mac', mac],
      ['mq', queues ? true : undefined],
      ['vectors', queues ? 2 * queues + 2 : undefined],
      ['bootindex', nic.bootOrder],
      // Without a boot order the NIC never boots: skip loading its iPXE ROM.
      ['romfile', nic.bootOrder === undefined ? '' : undefined],
    ]),
  );
}

function netdev(ctx: Ctx, nic: Nic, backend: QemuNetwork, id: string, hostname: string, multiqueue: boolean, queues: number | undefined): string {
  const { net, path } = nic;
  if (backend.kind === 'user') {
    // KubeVirt forwards only the listed ports when there are any; the agent derives the
    // forwards from them, so one outside the list is the agent's mistake, worth a warning.
    for (const f of backend.hostForwards ?? []) {
      if (nic.ports.length > 0 && !nic.ports.some((p) => p.port === f.guestPort && p.proto.toLowerCase() === f.proto)) {
        ctx.warnings.push(`${path}: host forward to guest port ${f.proto}/${f.guestPort} is not in ports`);
      }
    }
    if (multiqueue && ctx.vcpus > 1) ctx.warnings.push(`${path}: networkInterfaceMultiqueue has no effect on a user-mode (slirp) network`);
    return userNetdev(ctx, id, net, backend.hostForwards ?? [], hostname, `spec.networks[${net.index}].pod.vmNetworkCIDR`);
  }
  if (backend.kind === 'tap') {
    if (net.cidr !== undefined)
      ctx.c.value(
        `spec.networks[${net.index}].pod.vmNetworkCIDR`,
        net.cidr,
        'only user-mode networks take vmNetworkCIDR; the cluster network assigns addresses by DHCP',
      );
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(backend.ifname)) throw new TypeError(`buildQemuArgv: bad tap name ${JSON.stringify(backend.ifname)}`);
    return opt('tap', [
      ['id', id],
      ['ifname', backend.ifname],
      ['script', 'no'],
      ['downscript', 'no'],
      ['vhost', backend.vhost ? true : undefined],
      ['queues', queues],
    ]);
  }
  throw new TypeError(`buildQemuArgv: unknown network backend for ${nic.name}`);
}

/** An interface with only bindings the walker already refused (no second cause for it). */
function unsupportedBinding(o: Obj): boolean {
  return ['sriov', 'slirp', 'macvtap', 'passt', 'passtBinding', 'binding'].some((k) => isSet(o[k]));
}

function guestHostname(ctx: Ctx): string {
  const h = readStr(ctx.spec.hostname, 'spec.hostname', ctx.c);
  if (h !== undefined && !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(h)) {
    ctx.c.invalid('spec.hostname', h, 'must be a DNS label');
    return ctx.input.vmi.metadata.name;
  }
  return h ?? ctx.input.vmi.metadata.name;
}

/** slirp laid out like KubeVirt's masquerade: gateway .1, the guest .2 (by DHCP), DNS .3. */
function userNetdev(ctx: Ctx, id: string, net: { cidr?: string }, forwards: HostForward[], hostname: string, cidrField: string): string {
  let base = [10, 0, 2, 0];
  let prefix = 24;
  if (net.cidr !== undefined) {
    const parsed = parseVmNetworkCidr(net.cidr);
    if (!parsed) {
      ctx.c.invalid(cidrField, net.cidr, VM_NETWORK_CIDR_PROBLEM);
    } else {
      const { octets, prefix: len } = parsed;
      const ip = octets.reduce((a, o) => a * 256 + o, 0);
      const netIp = Math.floor(ip / 2 ** (32 - len)) * 2 ** (32 - len);
      base = [netIp >>> 24, (netIp >>> 16) & 255, (netIp >>> 8) & 255, netIp & 255];
      prefix = len;
    }
  }
  const addr = (add: number): string => {
    const v = base.reduce((a, o) => a * 256 + o, 0) + add;
    return [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join('.');
  };
  const props: Array<[string, string | undefined]> = [
    ['id', id],
    ['net', `${base.join('.')}/${prefix}`],
    ['host', addr(1)],
    ['dhcpstart', addr(2)],
    ['dns', addr(3)],
    ['hostname', hostname],
  ];
  for (const f of forwards) {
    const okPort = (p: number): boolean => Number.isInteger(p) && p >= 1 && p <= 65535;
    if ((f.proto !== 'tcp' && f.proto !== 'udp') || !okPort(f.hostPort) || !okPort(f.guestPort) || !/^(\d{1,3}(\.\d{1,3}){3})?$/.test(f.hostAddr)) {
      throw new TypeError(`buildQemuArgv: bad host forward ${JSON.stringify(f)}`);
    }
    props.push(['hostfwd', `${f.proto}:${f.hostAddr}:${f.hostPort}-:${f.guestPort}`]);
  }
  return opt('user', props);
}
