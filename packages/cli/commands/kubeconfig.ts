/**
 * `vessel kubeconfig`: prints the kubeconfig the CLI would use (or DIR/kubeconfig with
 * --data-dir), to hand to kubectl or copy to another machine: `vessel kubeconfig > ~/.kube/config`.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { ClientError, findKubeconfig } from '@vessel/client';
import { contextOf, out } from '../context.ts';

export function registerKubeconfig(program: Command): void {
  program
    .command('kubeconfig')
    .description('print the kubeconfig in use (or the one a server wrote in --data-dir)')
    .option('--data-dir <dir>', "a server's data directory: print DIR/kubeconfig")
    .option('--path', 'print only the file path')
    .action((opts: { dataDir?: string; path?: boolean }, cmd: Command) => {
      const path = opts.dataDir ? join(opts.dataDir, 'kubeconfig') : findKubeconfig({ explicit: contextOf(cmd).globals.kubeconfig });
      if (opts.path) return out(`${path}\n`);
      let text: string;
      try {
        text = readFileSync(path, 'utf8');
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        const hint =
          code === 'ENOENT'
            ? 'has the server been started with this data dir? (`vessel server --data-dir DIR`)'
            : code === 'EACCES'
              ? 'permission denied: run as root (sudo)'
              : (e as Error).message;
        throw new ClientError('NoKubeconfig', `cannot read ${path}: ${hint}`);
      }
      out(text.endsWith('\n') ? text : `${text}\n`);
    });
}
