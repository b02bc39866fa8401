/**
 * `vessel logs NAME [-f]`: everything the VMI's guest printed on its serial console, kept by
 * its node across reboots (the serial-log subresource), so boot output is readable without
 * having been attached. -f keeps printing new output until interrupted.
 */
import type { Command } from 'commander';
import { resourcePath, statusErrorFrom, withQuery, type ResourceRef } from '@vessel/client';
import { contextOf } from '../context.ts';
import { UsageError } from '../errors.ts';

const SUBRESOURCE_VMI: ResourceRef = { group: 'subresources.kubevirt.io', version: 'v1', plural: 'virtualmachineinstances', namespaced: true };

interface Flags {
  follow?: boolean;
  tailBytes?: string;
}

export function registerLogs(program: Command): void {
  program
    .command('logs')
    .description("print a VirtualMachineInstance's serial console output (-f to follow)")
    .argument('<name>', 'VirtualMachineInstance name')
    .option('-f, --follow', 'keep printing new output')
    .option('--tail-bytes <n>', 'only the last N bytes of the output so far')
    .action(async (name: string, flags: Flags, cmd: Command) => {
      if (flags.tailBytes !== undefined && !/^\d+$/.test(flags.tailBytes))
        throw new UsageError(`--tail-bytes must be a number of bytes, not "${flags.tailBytes}"`);
      const ctx = contextOf(cmd);
      const client = ctx.client();
      const path = withQuery(resourcePath(SUBRESOURCE_VMI, ctx.namespace(), name, 'serial-log'), {
        follow: flags.follow ? 'true' : undefined,
        tailBytes: flags.tailBytes,
      });
      const abort = new AbortController();
      const stop = () => abort.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      try {
        const res = await client.stream('GET', path, { headers: { Accept: 'text/plain, application/json' }, signal: abort.signal });
        if ((res.statusCode ?? 0) >= 400) {
          const chunks: Buffer[] = [];
          for await (const c of res) chunks.push(c as Buffer);
          throw statusErrorFrom(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8'));
        }
        for await (const chunk of res) {
          if (!process.stdout.write(chunk as Buffer)) await new Promise((r) => process.stdout.once('drain', r));
        }
      } catch (e) {
        if (!abort.signal.aborted) throw e; // Ctrl-C while following is the normal way out
      } finally {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      }
    });
}
