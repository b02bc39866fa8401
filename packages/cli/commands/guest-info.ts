/**
 * virtctl's guest agent verbs: `vessel guestosinfo|userlist|fslist NAME` print, as JSON, what the
 * guest agent of the running VM reports (KubeVirt's guestosinfo, userlist and filesystemlist
 * subresources of the VMI). The server's 409 (not running, no guest agent connected) is printed
 * as it is.
 */
import type { Command } from 'commander';
import { contextOf, out } from '../context.ts';
import { toJson } from '../printers/structured.ts';

const VERBS: Record<string, { subresource: string; description: string }> = {
  guestosinfo: { subresource: 'guestosinfo', description: "print the guest OS, hostname, timezone, users and filesystems the VM's guest agent reports" },
  userlist: { subresource: 'userlist', description: "print the users logged in to the VM's guest" },
  fslist: { subresource: 'filesystemlist', description: "print the filesystems mounted in the VM's guest" },
};

export function registerGuestInfo(program: Command): void {
  for (const [verb, { subresource, description }] of Object.entries(VERBS)) {
    program
      .command(verb)
      .description(description)
      .argument('<name>', 'VirtualMachineInstance (or VM) name')
      .action(async (name: string, _flags: unknown, cmd: Command) => {
        const ctx = contextOf(cmd);
        const path = `/apis/subresources.kubevirt.io/v1/namespaces/${encodeURIComponent(ctx.namespace())}/virtualmachineinstances/${encodeURIComponent(name)}/${subresource}`;
        out(toJson(await ctx.client().request('GET', path)));
      });
  }
}
