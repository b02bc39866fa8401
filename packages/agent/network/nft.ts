/**
 * The node's nftables table `inet vessel`: masquerade of VM traffic that leaves the VM network
 * (egress through the node). Replaced whole in one transaction, so a rerun never doubles rules
 * and never leaves a half-written table.
 */
import { NetworkError } from './errors.ts';
import { inNs, type NetNs } from './exec.ts';
import { BRIDGE } from './bridge.ts';

export const NFT_TABLE = 'vessel';

const CIDR_RE = /^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/;

/** The ruleset text (pure; `nft -f -` reads it). */
export function vesselRuleset(vmCidr: string): string {
  if (!CIDR_RE.test(vmCidr)) throw new NetworkError('InvalidArgument', `bad VM network CIDR ${JSON.stringify(vmCidr)}`);
  return [
    // Declaring the table first makes the delete succeed when it does not exist yet.
    `table inet ${NFT_TABLE}`,
    `delete table inet ${NFT_TABLE}`,
    `table inet ${NFT_TABLE} {`,
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    ip saddr ${vmCidr} ip daddr != ${vmCidr} oifname != "${BRIDGE}" masquerade`,
    '  }',
    '}',
    '',
  ].join('\n');
}

export async function installRuleset(ns: NetNs, vmCidr: string): Promise<void> {
  await inNs(ns, ['nft', '-f', '-'], { input: vesselRuleset(vmCidr) });
}

export async function removeRuleset(ns: NetNs): Promise<void> {
  await inNs(ns, ['nft', 'delete', 'table', 'inet', NFT_TABLE], { okCodes: [1] });
}
