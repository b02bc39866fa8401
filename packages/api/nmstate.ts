/**
 * The nmstate.io subset Vessel applies (docs/network.md, "Node network configuration"): the
 * shapes of a NodeNetworkConfigurationPolicy's desired state and of a node's reported state,
 * their condition types and reasons (kubernetes-nmstate's), and the label keys of enactments.
 * Shared by admission (kinds/nmstate.ts) and the agents, so both read a policy alike.
 */

export const INTERFACE_TYPES = ['linux-bridge', 'vlan', 'ethernet'] as const;
export type InterfaceType = (typeof INTERFACE_TYPES)[number];
export const INTERFACE_STATES = ['up', 'down', 'absent'] as const;
export type InterfaceState = (typeof INTERFACE_STATES)[number];
export const PORT_VLAN_MODES = ['access', 'trunk'] as const;

export interface Ipv4Address {
  ip: string;
  'prefix-length': number;
}
export interface BridgePortVlan {
  mode?: (typeof PORT_VLAN_MODES)[number];
  tag?: number;
  'trunk-tags'?: { id: number }[];
}
export interface BridgePort {
  name: string;
  vlan?: BridgePortVlan;
}
export interface DesiredInterface {
  name: string;
  type?: InterfaceType;
  /** Default `up`. */
  state?: InterfaceState;
  mtu?: number;
  ipv4?: { enabled?: boolean; dhcp?: boolean; address?: Ipv4Address[] };
  bridge?: { options?: { stp?: { enabled?: boolean } }; port?: BridgePort[] };
  vlan?: { 'base-iface': string; id: number };
}
export interface DesiredState {
  interfaces?: DesiredInterface[];
}
export interface PolicySpec {
  nodeSelector?: Record<string, string>;
  desiredState?: DesiredState;
}

/** One interface of a NodeNetworkState (status.currentState.interfaces[]). */
export interface CurrentInterface {
  name: string;
  /** nmstate's type names: linux-bridge, vlan, ethernet, veth, vxlan, dummy, loopback, unknown. */
  type: string;
  state: 'up' | 'down';
  'mac-address'?: string;
  mtu?: number;
  ipv4: { enabled: boolean; address: Ipv4Address[] };
  bridge?: { options: { stp: { enabled: boolean } }; port: { name: string }[] };
  vlan?: { 'base-iface': string; id: number };
  /** The bridge this interface is a port of (not an nmstate field; Vessel's plan uses it). */
  controller?: string;
}

/** Condition types and reasons, as kubernetes-nmstate names them. */
export const Condition = {
  Available: 'Available',
  Degraded: 'Degraded',
  Progressing: 'Progressing',
  Failing: 'Failing',
  Pending: 'Pending',
  Aborted: 'Aborted',
} as const;
export const ConditionReason = {
  Progressing: 'ConfigurationProgressing',
  Success: 'SuccessfullyConfigured',
  Failed: 'FailedToConfigure',
  Aborted: 'ConfigurationAborted',
  NoMatchingNode: 'NoMatchingNode',
} as const;

/** Labels on an enactment: the node and the policy it is for (kubernetes-nmstate's keys). */
export const NODE_LABEL = 'nmstate.io/node';
export const POLICY_LABEL = 'nmstate.io/policy';

/** The enactment of `policy` on `node`: `<node>.<policy>`, as kubernetes-nmstate names it. */
export const enactmentName = (node: string, policy: string): string => `${node}.${policy}`;

const IFNAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

/** Why `name` cannot be a Linux interface name Vessel manages (at most 15 of [A-Za-z0-9_.-]); undefined when fine. */
export function ifnameProblem(name: string): string | undefined {
  return IFNAME_RE.test(name) ? undefined : "must be 1 to 15 letters, digits, '_', '.' or '-', starting with a letter or digit";
}

/** Whether a node with these labels is selected (an empty or absent selector selects every node). */
export function selectsNode(spec: PolicySpec | undefined, labels: Record<string, string> | undefined): boolean {
  return Object.entries(spec?.nodeSelector ?? {}).every(([k, v]) => labels?.[k] === v);
}
