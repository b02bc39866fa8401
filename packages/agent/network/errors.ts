/**
 * Errors of the node's network data plane. `code` is stable for callers to branch on; the
 * message names the command or object and what to do.
 */

export type NetworkErrorCode =
  | 'CommandFailed' // ip, bridge, nft, dnsmasq or nsenter exited non-zero (or could not be run)
  | 'ToolMissing' // one of them is not installed
  | 'InvalidArgument' // a namespace, interface or address the caller passed is malformed
  | 'DnsmasqFailed' // dnsmasq did not start or did not write its pid file
  | 'AddressPending' // the VM's (or the node's) IPAddress does not exist yet: IPAM has not allocated it
  | 'NetworkNotFound' // a VM names a NetworkAttachmentDefinition that does not exist
  | 'Unsupported' // the node's kernel cannot build what is asked (e.g. no bridge VLAN filtering)
  | 'NetworkInvalid'; // a NetworkAttachmentDefinition's CNI config is one Vessel cannot build

export class NetworkError extends Error {
  readonly code: NetworkErrorCode;
  constructor(code: NetworkErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NetworkError';
    this.code = code;
  }
}
