/**
 * virtctl's lifecycle verbs: `vessel start|stop|restart NAME` act on the VirtualMachine,
 * `vessel pause|unpause|softreboot (virtctl: soft-reboot)|reset NAME` on its running instance (virtctl's
 * `pause vm NAME` / `pause vmi NAME` forms are accepted too). Each is one PUT to KubeVirt's
 * subresource path; the server's refusal (409: the run strategy or state forbids it) is
 * printed as it is.
 */
import type { Command } from 'commander';
import { contextOf, out } from '../context.ts';
import { UsageError } from '../errors.ts';

const VM_ACTIONS = { start: 'start the VirtualMachine', stop: 'stop the VirtualMachine (ACPI power-off, then force)', restart: 'restart the VirtualMachine' };
const VMI_ACTIONS = {
  pause: 'pause the running VM (its vCPUs stop)',
  unpause: 'resume a paused VM',
  softreboot: 'reboot the guest through ACPI',
  reset: 'hard-reset the guest',
};
const PAST: Record<string, string> = {
  start: 'was scheduled to start',
  stop: 'was scheduled to stop',
  restart: 'was scheduled to restart',
  pause: 'was paused',
  unpause: 'was unpaused',
  softreboot: 'was scheduled to soft reboot',
  reset: 'was reset',
};

export function registerVmActions(program: Command): void {
  for (const [action, description] of Object.entries({ ...VM_ACTIONS, ...VMI_ACTIONS })) {
    const onVm = action in VM_ACTIONS;
    const command = program.command(action);
    // virtctl's name for softreboot; Vessel's name stays.
    if (action === 'softreboot') command.alias('soft-reboot');
    command
      .description(description)
      .argument('<name-or-kind>', onVm ? 'VirtualMachine name' : 'VM name (or "vm"/"vmi" followed by the name)')
      .argument('[name]')
      .action(async (first: string, second: string | undefined, _flags: unknown, cmd: Command) => {
        let name = first;
        if (second !== undefined) {
          if (!['vm', 'vmi', 'virtualmachine', 'virtualmachineinstance'].includes(first))
            throw new UsageError(`unexpected argument "${second}": use vessel ${action} NAME`);
          name = second;
        }
        const ctx = contextOf(cmd);
        const ns = ctx.namespace();
        const resource = onVm ? 'virtualmachines' : 'virtualmachineinstances';
        await ctx
          .client()
          .request('PUT', `/apis/subresources.kubevirt.io/v1/namespaces/${encodeURIComponent(ns)}/${resource}/${encodeURIComponent(name)}/${action}`, {
            body: {},
          });
        out(`VM ${name} ${PAST[action]}\n`);
      });
  }
}
