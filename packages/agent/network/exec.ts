/**
 * Runs the network tools in a node's network namespace, or in the agent's own when there is
 * none (a real host): `ip -n NS`, `bridge -n NS`, and `nsenter --net=/run/netns/NS -- CMD` for
 * the rest. Always argv arrays, never a shell.
 */
import { execFile } from 'node:child_process';
import { NetworkError } from './errors.ts';

/** A network namespace made with `ip netns add` (undefined: the agent's own). */
export type NetNs = string | undefined;

const NETNS_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const IFNAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

export function checkNetns(ns: string): string {
  if (!NETNS_RE.test(ns))
    throw new NetworkError('InvalidArgument', `bad network namespace name ${JSON.stringify(ns)}: letters, digits, '_', '.', '-', at most 64`);
  return ns;
}

export function checkIfname(name: string): string {
  if (!IFNAME_RE.test(name)) throw new NetworkError('InvalidArgument', `bad interface name ${JSON.stringify(name)}: at most 15 letters, digits, '_', '.', '-'`);
  return name;
}

/** The path `nsenter --net=` takes for a namespace of `ip netns`. */
export const netnsPath = (ns: string): string => `/run/netns/${checkNetns(ns)}`;

/** The prefix that runs a command in `ns` (empty for the agent's own namespace). */
export function inNetns(ns: NetNs): string[] {
  return ns === undefined ? [] : ['nsenter', `--net=${netnsPath(ns)}`, '--'];
}

export interface RunOptions {
  input?: string;
  timeoutMs?: number;
  /** Exit codes that are not failures (e.g. 2 for "no such device" when probing). */
  okCodes?: number[];
}

export interface RunOutput {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs argv[0] with the rest; NetworkError CommandFailed (or ToolMissing) on failure. */
export function runCmd(argv: readonly string[], opts: RunOptions = {}): Promise<RunOutput> {
  return new Promise((resolve, reject) => {
    const child = execFile(argv[0], argv.slice(1), { timeout: opts.timeoutMs ?? 15_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (!err) return resolve({ code: 0, stdout, stderr });
      const e = err as NodeJS.ErrnoException & { code?: string | number };
      if (e.code === 'ENOENT')
        return reject(
          new NetworkError('ToolMissing', `${argv[0]} is not installed (scripts/setup.sh installs iproute2, nftables, dnsmasq-base)`, { cause: err }),
        );
      const code = typeof e.code === 'number' ? e.code : -1;
      if (opts.okCodes?.includes(code)) return resolve({ code, stdout, stderr });
      const first = (stderr || err.message).split('\n').find((l) => l.trim()) ?? '';
      reject(new NetworkError('CommandFailed', `${argv.join(' ')} failed (exit ${code}): ${first.trim()}`, { cause: err }));
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** `ip [-n NS] args...` */
export const ip = (ns: NetNs, args: readonly string[], opts?: RunOptions): Promise<RunOutput> =>
  runCmd(['ip', ...(ns === undefined ? [] : ['-n', checkNetns(ns)]), ...args], opts);

/** `bridge [-n NS] args...` */
export const bridgeCmd = (ns: NetNs, args: readonly string[], opts?: RunOptions): Promise<RunOutput> =>
  runCmd(['bridge', ...(ns === undefined ? [] : ['-n', checkNetns(ns)]), ...args], opts);

/** Any other command in `ns`. */
export const inNs = (ns: NetNs, argv: readonly string[], opts?: RunOptions): Promise<RunOutput> => runCmd([...inNetns(ns), ...argv], opts);

/** Whether interface `name` exists in `ns`. */
export async function linkExists(ns: NetNs, name: string): Promise<boolean> {
  const r = await ip(ns, ['-j', 'link', 'show', 'dev', checkIfname(name)], { okCodes: [1, 255] });
  return r.code === 0;
}

/** `ip -j -d link show dev NAME` parsed, or undefined when it does not exist. */
export async function linkDetails(ns: NetNs, name: string): Promise<Record<string, unknown> | undefined> {
  const r = await ip(ns, ['-j', '-d', 'link', 'show', 'dev', checkIfname(name)], { okCodes: [1, 255] });
  if (r.code !== 0) return undefined;
  const parsed = JSON.parse(r.stdout) as Record<string, unknown>[];
  return parsed[0];
}
