/**
 * `vessel ssh [user@]vm/NAME` and `vessel scp SRC DST` (virtctl's verbs with --local-ssh): the
 * system's OpenSSH client, its connection carried by `vessel port-forward --stdio` as its
 * ProxyCommand, so a user needs no route to the VM network; keys, agents, known_hosts and
 * ssh_config work as always. Host keys are recorded under `vm.NAME.NAMESPACE` (or `vmi.`),
 * the host name given to ssh.
 */
import { spawn } from 'node:child_process';
import type { Command } from 'commander';
import { contextOf } from '../context.ts';
import { UsageError } from '../errors.ts';
import { parseTarget, type ForwardTarget } from './port-forward.ts';

/** How to run `vessel` again (this very CLI) for the ProxyCommand, and the globals it needs. */
export interface ProxyOptions {
  /** argv that starts this CLI: node, its flags (the tsx loader), the entry script. */
  self: string[];
  namespace: string;
  kubeconfig?: string;
  context?: string;
}

/** A `[user@]TYPE/NAME` destination. */
export interface Destination extends ForwardTarget {
  user?: string;
}

export function parseDestination(arg: string): Destination {
  const at = arg.lastIndexOf('@', arg.indexOf('/'));
  const user = at > 0 ? arg.slice(0, at) : undefined;
  return { ...parseTarget(at >= 0 ? arg.slice(at + 1) : arg), ...(user ? { user } : {}) };
}

/** The host name ssh sees (and keeps host keys under): `vm.NAME.NAMESPACE`. */
export function hostAlias(t: ForwardTarget, namespace: string): string {
  return `${t.resource === 'virtualmachines' ? 'vm' : 'vmi'}.${t.name}.${namespace}`;
}

/**
 * ssh's ProxyCommand: `vessel port-forward --stdio TYPE/NAME PORT` with the same kubeconfig,
 * context and namespace. ssh runs it with the user's shell, so each word is single-quoted, and
 * `%` is doubled (ssh expands %-tokens in it).
 */
export function proxyCommand(o: ProxyOptions, t: ForwardTarget, port: number): string {
  const argv = [
    ...o.self,
    ...(o.kubeconfig ? ['--kubeconfig', o.kubeconfig] : []),
    ...(o.context ? ['--context', o.context] : []),
    '-n',
    o.namespace,
    'port-forward',
    '--stdio',
    `${t.resource === 'virtualmachines' ? 'vm' : 'vmi'}/${t.name}`,
    String(port),
  ];
  return argv.map(shellQuote).join(' ').replaceAll('%', '%%');
}

function shellQuote(word: string): string {
  return /^[A-Za-z0-9_./=:@,+-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

export interface SshFlags {
  identityFile?: string;
  username?: string;
  port: string;
  command?: string;
  localSshOpts: string[];
}

/** The argv of `ssh` for `vessel ssh` (without the program name). */
export function sshArgv(o: ProxyOptions, dest: Destination, flags: SshFlags): string[] {
  const port = sshPort(flags.port);
  const user = flags.username ?? dest.user;
  return [
    '-o',
    `ProxyCommand=${proxyCommand(o, dest, port)}`,
    ...(flags.identityFile ? ['-i', flags.identityFile] : []),
    ...flags.localSshOpts,
    `${user ? `${user}@` : ''}${hostAlias(dest, o.namespace)}`,
    ...(flags.command !== undefined ? ['--', flags.command] : []),
  ];
}

export interface ScpFlags {
  identityFile?: string;
  username?: string;
  port: string;
  recursive?: boolean;
  localSshOpts: string[];
}

/**
 * The argv of `scp` for `vessel scp SRC DST`: exactly one of them is `[user@]TYPE/NAME:PATH`,
 * rewritten to the host alias. `-O` (the classic scp protocol) since small guests often have
 * no SFTP server.
 */
export function scpArgv(o: ProxyOptions, src: string, dst: string, flags: ScpFlags): string[] {
  const remote = (arg: string) => {
    const m = /^([^/:]*@)?(vmi?|vms|vmis|virtualmachines?|virtualmachineinstances?)\/([^/:]+):(.*)$/i.exec(arg);
    return m ? { dest: parseDestination(`${m[1] ?? ''}${m[2]}/${m[3]}`), path: m[4] } : undefined;
  };
  const [rs, rd] = [remote(src), remote(dst)];
  if ((rs ? 1 : 0) + (rd ? 1 : 0) !== 1) throw new UsageError('exactly one of SRC and DST must be [user@]vm/NAME:PATH (or vmi/NAME:PATH)');
  const r = (rs ?? rd)!;
  const user = flags.username ?? r.dest.user;
  const remoteArg = `${user ? `${user}@` : ''}${hostAlias(r.dest, o.namespace)}:${r.path}`;
  return [
    '-O',
    '-o',
    `ProxyCommand=${proxyCommand(o, r.dest, sshPort(flags.port))}`,
    ...(flags.identityFile ? ['-i', flags.identityFile] : []),
    ...(flags.recursive ? ['-r'] : []),
    ...flags.localSshOpts,
    rs ? remoteArg : src,
    rd ? remoteArg : dst,
  ];
}

function sshPort(p: string): number {
  const n = /^\d{1,5}$/.test(p) ? Number(p) : NaN;
  if (!(n >= 1 && n <= 65535)) throw new UsageError(`--port must be a port number, not "${p}"`);
  return n;
}

/** This CLI as a command line: node with its flags (tsx's loader) and the entry script. */
function selfArgv(): string[] {
  return [process.execPath, ...process.execArgv, process.argv[1]];
}

const collect = (v: string, prev: string[]) => [...prev, v];

export function registerSsh(program: Command): void {
  program
    .command('ssh')
    .description('open an SSH session to a VM with the local ssh client, tunnelled through the API server (port-forward)')
    .argument('<destination>', '[user@]vm/NAME or [user@]vmi/NAME')
    .option('-i, --identity-file <file>', 'private key (ssh -i)')
    .option('-l, --username <user>', 'user to log in as')
    .option('-p, --port <port>', "the guest's SSH port", '22')
    .option('-c, --command <command>', 'run this command in the guest instead of a shell')
    .option('-t, --local-ssh-opts <opt>', 'an extra argument for ssh (repeatable), e.g. -t -oStrictHostKeyChecking=no', collect, [] as string[])
    .action(async (destArg: string, flags: SshFlags, cmd: Command) => {
      const o = proxyOptions(cmd);
      process.exitCode = await run('ssh', sshArgv(o, parseDestination(destArg), flags));
    });
  program
    .command('scp')
    .description('copy files to or from a VM with the local scp client, tunnelled through the API server (port-forward)')
    .argument('<source>', 'a local path, or [user@]vm/NAME:PATH')
    .argument('<destination>', 'a local path, or [user@]vm/NAME:PATH')
    .option('-i, --identity-file <file>', 'private key (scp -i)')
    .option('-l, --username <user>', 'user to log in as')
    .option('-P, --port <port>', "the guest's SSH port", '22')
    .option('-r, --recursive', 'copy directories recursively')
    .option('-t, --local-ssh-opts <opt>', 'an extra argument for scp (repeatable)', collect, [] as string[])
    .action(async (src: string, dst: string, flags: ScpFlags, cmd: Command) => {
      process.exitCode = await run('scp', scpArgv(proxyOptions(cmd), src, dst, flags));
    });
}

function proxyOptions(cmd: Command): ProxyOptions {
  const g = cmd.optsWithGlobals<{ kubeconfig?: string; context?: string }>();
  return { self: selfArgv(), namespace: contextOf(cmd).namespace(), kubeconfig: g.kubeconfig, context: g.context };
}

/** Runs the OpenSSH client on our terminal; resolves with its exit code. */
function run(program: string, argv: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, argv, { stdio: 'inherit' });
    child.once('error', (e: NodeJS.ErrnoException) =>
      reject(
        new Error(
          e.code === 'ENOENT' ? `${program} is not installed: install the OpenSSH client (Debian: openssh-client)` : `cannot run ${program}: ${e.message}`,
        ),
      ),
    );
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}
