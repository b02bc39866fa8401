/**
 * `vessel create namespace NAME`: the one object worth creating without a manifest; and
 * virtctl's generators, `vessel create vm|instancetype|preference`, which print a manifest
 * (as virtctl does) or, with --apply, apply it.
 */
import type { Command } from 'commander';
import { stringify } from 'yaml';
import type { KubeObject, ResourceRef } from '@vessel/client';
import { contextOf, out } from '../context.ts';
import { createInstancetypeManifest, createPreferenceManifest, createVmManifest, type CreateVmOptions } from '../create-vm.ts';
import { applyObject } from './apply.ts';

const NAMESPACES: ResourceRef = { group: '', version: 'v1', plural: 'namespaces', namespaced: false };

const collect = (v: string, prev: string[] = []) => [...prev, v];

/** Prints the manifest, or applies it with --apply. */
async function emit(cmd: Command, manifest: Record<string, unknown>, apply: boolean | undefined): Promise<void> {
  if (!apply) {
    out(stringify(manifest));
    return;
  }
  const ctx = contextOf(cmd);
  const client = ctx.client();
  const object = manifest as KubeObject;
  const resource = await client.resolveKind(object.apiVersion as string, object.kind as string);
  const result = await applyObject(client, resource, object, resource.namespaced ? ctx.namespace() : undefined);
  out(`${object.kind!.toLowerCase()}.${resource.group}/${object.metadata?.name} ${result}\n`);
}

export function registerCreate(program: Command): void {
  const create = program.command('create').description('create an object without a manifest (use `apply -f` for manifests)');
  create
    .command('namespace')
    .alias('ns')
    .description('create a namespace')
    .argument('<name>', 'the namespace name')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const client = contextOf(cmd).client();
      await client.create(NAMESPACES, { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
      out(`namespace/${name} created\n`);
    });
  create
    .command('vm')
    .description('print a VirtualMachine manifest as virtctl create vm does (--apply: apply it)')
    .option('--name <name>', 'the VM name (default: vm-<random>)')
    .option('--run-strategy <strategy>', 'Always, RerunOnFailure, Manual, Halted or Once', 'Always')
    .option('--instancetype <[kind/]name>', 'the instancetype (kind: virtualmachineinstancetype or the default virtualmachineclusterinstancetype)')
    .option('--preference <[kind/]name>', 'the preference (kind: virtualmachinepreference or the default virtualmachineclusterpreference)')
    .option('--infer-instancetype', 'infer the instancetype from the first volume (its default-instancetype label)')
    .option('--infer-preference', 'infer the preference from the first volume (its default-preference label)')
    .option('--volume-import <params>', 'type:ds|pvc|registry|http|blank,src:[ns/]name|url[,name:N][,size:Q][,storageclass:C] (repeatable)', collect)
    .option('--volume-containerdisk <params>', 'src:image[,name:N][,bootorder:N] (repeatable)', collect)
    .option('--volume-pvc <params>', 'src:claim[,name:N] (repeatable)', collect)
    .option('--cloud-init-user-data <base64>', 'cloud-init user data, base64-encoded')
    .option('--user <name>', 'a cloud-init user')
    .option('--ssh-key <key>', 'an authorized SSH public key for that user (repeatable)', collect)
    .option('--memory <quantity>', 'guest memory when no instancetype gives it (default 512Mi)')
    .option('--termination-grace-period <seconds>', 'terminationGracePeriodSeconds (default 180)', (v: string) => Number(v))
    .option('--apply', 'apply the manifest instead of printing it')
    .action(async (opts: CreateVmOptions & { apply?: boolean }, cmd: Command) => {
      await emit(cmd, createVmManifest(opts), opts.apply);
    });
  create
    .command('instancetype')
    .description('print a VirtualMachineClusterInstancetype (or with --namespaced a VirtualMachineInstancetype) manifest')
    .option('--name <name>', 'its name (default: random)')
    .requiredOption('--cpu <n>', 'vCPUs', (v: string) => Number(v))
    .requiredOption('--memory <quantity>', 'guest memory, e.g. 2Gi')
    .option('--namespaced', 'a namespaced VirtualMachineInstancetype')
    .option('--apply', 'apply the manifest instead of printing it')
    .action(async (opts: { name?: string; cpu: number; memory: string; namespaced?: boolean; apply?: boolean }, cmd: Command) => {
      await emit(cmd, createInstancetypeManifest(opts), opts.apply);
    });
  create
    .command('preference')
    .description('print a VirtualMachineClusterPreference (or with --namespaced a VirtualMachinePreference) manifest')
    .option('--name <name>', 'its name (default: random)')
    .option('--cpu-topology <topology>', 'preferSockets, preferCores, preferThreads, preferSpread or preferAny')
    .option('--machine-type <type>', 'preferred machine type, e.g. q35')
    .option('--volume-storage-class <class>', 'preferred storage class of its volumes')
    .option('--namespaced', 'a namespaced VirtualMachinePreference')
    .option('--apply', 'apply the manifest instead of printing it')
    .action(
      async (
        opts: { name?: string; namespaced?: boolean; cpuTopology?: string; machineType?: string; volumeStorageClass?: string; apply?: boolean },
        cmd: Command,
      ) => {
        await emit(cmd, createPreferenceManifest(opts), opts.apply);
      },
    );
}
