/**
 * The VM process layer: starts QEMU detached from the agent (`-daemonize`: QEMU forks, calls
 * setsid and is re-parented to init) so that stopping or killing the agent never stops a guest,
 * and finds such processes again after an agent restart from their run directory.
 *
 * Per VM a run directory holds: qmp.sock (QMP), serial.sock (first serial port; QEMU serves one
 * client at a time) + serial.log (everything the guest printed, attached or not, appended across
 * launches), vnc.sock and qga.sock (when asked for), qemu.pid, qemu.log (QEMU's stderr for the
 * current launch; the previous one is kept as qemu.log.1) and vm.json (who the VM is, for
 * re-adoption). The processes are not our children, so liveness is read from /proc.
 */
import { spawn } from 'node:child_process';
import { mkdir, open, readFile, readdir, realpath, rename, stat, unlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { QmpClient } from '../qmp/client.ts';
import { QemuLaunchError, QemuProcessError, firstQemuLine } from './errors.ts';
import { applyLaunchWeight, findExecutable, joinCgroup, wrapLaunch, type LaunchPriority } from './priority.ts';

export const DEFAULT_QEMU_BINARY = 'qemu-system-x86_64';

/**
 * Chardev ids launch() uses by default; the same ids the argv builder's devices refer to
 * (isa-serial on serial0, virtserialport org.qemu.guest_agent.0 on qga0).
 */
export const CHARDEV_IDS = { qmp: 'qmp0', serial: 'serial0', qga: 'qga0' } as const;

/** A chardev the caller's devices refer to (the argv builder's `QemuArgv.chardevs`). */
export interface ChardevRequest {
  id: string;
  /** serial-console: socket serial.sock logging to serial.log; guest-agent: socket qga.sock. */
  role: 'serial-console' | 'guest-agent';
}

/** The files of one run directory (absolute paths). */
export interface RunDirFiles {
  dir: string;
  qmp: string;
  serial: string;
  serialLog: string;
  vnc: string;
  qga: string;
  pidfile: string;
  /** QEMU's stderr and stdout of the current launch. */
  log: string;
  /** vm.json: VmMetadata written by launch(). */
  meta: string;
}

export function runDirFiles(runDir: string): RunDirFiles {
  const dir = path.resolve(runDir);
  return {
    dir,
    qmp: path.join(dir, 'qmp.sock'),
    serial: path.join(dir, 'serial.sock'),
    serialLog: path.join(dir, 'serial.log'),
    vnc: path.join(dir, 'vnc.sock'),
    qga: path.join(dir, 'qga.sock'),
    pidfile: path.join(dir, 'qemu.pid'),
    log: path.join(dir, 'qemu.log'),
    meta: path.join(dir, 'vm.json'),
  };
}

/** The last line QEMU wrote to its log in `runDir` (why it exited), or a placeholder. */
export async function lastLogLine(runDir: string): Promise<string> {
  const text = await readFile(runDirFiles(runDir).log, 'utf8').catch(() => '');
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return lines[lines.length - 1] ?? 'no output from QEMU';
}

/** Who the VM is, so an agent that restarts can map the process back to its VMI. */
export interface VmIdentity {
  uid?: string;
  namespace?: string;
  name?: string;
}

/** vm.json. */
export interface VmMetadata extends VmIdentity {
  /** Free-form caller data (e.g. the VMI resourceVersion the argv was built from). */
  meta: Record<string, string>;
  binary?: string;
  /** The caller's argv (without the run-directory options launch() adds). */
  argv?: string[];
  launchedAt?: string;
}

export interface LaunchOptions {
  runDir: string;
  /** qemu-system-x86_64 arguments without -qmp/-serial/-vnc/-pidfile/-daemonize/-D/-d or our chardevs. */
  argv: readonly string[];
  /** Default qemu-system-x86_64 (looked up in PATH). */
  binary?: string;
  vm?: VmIdentity;
  meta?: Record<string, string>;
  /**
   * The chardevs argv's devices use (pass the argv builder's `chardevs`); launch defines them on
   * the run directory's sockets. Without it (hand-written argv) launch defines serial0 and adds
   * `-serial chardev:serial0`, so the guest's ttyS0 is the console.
   */
  chardevs?: readonly ChardevRequest[];
  /** Add `-vnc unix:<vnc.sock>`. */
  vnc?: boolean;
  /** Add `-no-shutdown`: QEMU stays (status 'shutdown') after the guest powers off, until killed. */
  noShutdown?: boolean;
  /** Limit for QEMU's initialisation plus the first QMP answer (default 60 s). */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  /**
   * Run QEMU below the caller's CPU priority (qemu/priority.ts): nice and SCHED_BATCH set
   * before QEMU's first instruction, its autogroup's nice, and optionally a cgroup v2 group.
   * Default: the caller's own priority.
   */
  priority?: LaunchPriority;
  /**
   * Run QEMU in this network namespace (`ip netns`; the node's in the dev cluster), through
   * `nsenter --net=/run/netns/NS --` in front of the priority chain, so its taps are the node's.
   */
  netns?: string;
}

export interface LaunchResult {
  pid: number;
  files: RunDirFiles;
  /** Size of serial.log before this launch: pass as `since` to waitForSerial to skip older boots. */
  serialOffset: number;
}

/** A live QEMU found in a run directory. */
export interface RunningVm {
  pid: number;
  runDir: string;
  files: RunDirFiles;
  /** vm.json; `{ meta: {} }` when it is missing or unreadable. */
  meta: VmMetadata;
}

/** Options QEMU would get twice, or that would undo what launch() sets up. */
const OWNED_OPTIONS = new Set(['-daemonize', '-pidfile', '-qmp', '-qmp-pretty', '-serial', '-vnc', '-D', '-d']);

/** sun_path is 108 bytes with its NUL. */
const MAX_SOCKET_PATH = 107;

/** serial.log is appended across launches; past this size the next launch moves it to serial.log.1. */
const SERIAL_LOG_ROTATE_BYTES = 16 * 1024 * 1024;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Starts QEMU for a VM in `runDir` (created if missing) and returns once it runs and answers
 * QMP. The guest starts running at once unless argv holds `-S`. Throws QemuLaunchError with
 * QEMU's own reason when it fails to start; then no QEMU process is left behind.
 */
export async function launch(opts: LaunchOptions): Promise<LaunchResult> {
  const binary = opts.binary ?? DEFAULT_QEMU_BINARY;
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const deadline = Date.now() + timeoutMs;
  checkArgv(opts.argv, opts);
  await mkdir(path.resolve(opts.runDir), { recursive: true, mode: 0o750 });
  // QEMU's cmdline must name the same path adopt() derives later, so resolve symlinks once here.
  const files = runDirFiles(await realpath(opts.runDir));
  checkRunDir(files);

  const running = await probe(files.dir);
  if (running !== undefined) {
    throw new QemuProcessError('AlreadyRunning', `QEMU (pid ${running}) is already running in ${files.dir}: adopt it, or stop it before launching again`);
  }
  await removeStale(files);
  await rotate(files.log, 0);
  await rotate(files.serialLog, SERIAL_LOG_ROTATE_BYTES);
  const serialOffset = await sizeOf(files.serialLog);
  const meta: VmMetadata = { ...opts.vm, meta: { ...opts.meta }, binary, argv: [...opts.argv], launchedAt: new Date().toISOString() };
  await writeJsonAtomic(files.meta, meta);

  const argv = [...opts.argv, ...runDirArgs(files, opts)];
  const prio = opts.priority;
  if (opts.netns !== undefined && !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(opts.netns))
    throw new QemuProcessError('InvalidArgument', `bad network namespace ${JSON.stringify(opts.netns)}`);
  const command = wrapLaunch(binary, argv, prio, opts.netns === undefined ? [] : ['nsenter', `--net=/run/netns/${opts.netns}`, '--']);
  // Through nice/chrt a missing QEMU would be their exit 127; say it the way spawn would.
  const missing = command.file !== binary && (await findExecutable(binary, opts.env ?? process.env)) === undefined;
  const log = await open(files.log, 'a');
  let outcome: LauncherOutcome;
  const joins: Promise<unknown>[] = [];
  try {
    outcome = missing
      ? { error: Object.assign(new Error(`spawn ${binary} ENOENT`), { code: 'ENOENT' }) }
      : // The launcher joins the VM's cgroup at once, so the daemon it forks is born there.
        await runLauncher(command.file, command.args, log.fd, opts.env, timeoutMs, (pid) => {
          // Best effort: the agent moves the daemon into the cgroup again after start, and that move's failure is reported.
          if (prio?.cgroupDir) joins.push(joinCgroup(prio.cgroupDir, pid).catch(() => undefined));
        });
  } finally {
    await Promise.all(joins);
    await log.close();
  }

  if ('error' in outcome) {
    await removeStale(files);
    throw new QemuLaunchError('LaunchFailed', `cannot run ${binary}: ${outcome.error.message}; install qemu-system-x86 or pass the right binary`, '', null, {
      cause: outcome.error,
    });
  }
  if (outcome.timedOut || outcome.code !== 0) {
    await killLeftover(files);
    const stderr = await readText(files.log);
    if (outcome.timedOut) {
      throw new QemuLaunchError(
        'StartTimeout',
        `QEMU did not finish starting within ${timeoutMs} ms and was killed: ${firstQemuLine(stderr) || 'no error output'}; the host may be overloaded, see ${files.log}`,
        stderr,
        null,
      );
    }
    const reason = firstQemuLine(stderr) || `exit ${outcome.code ?? outcome.signal}, no error output (see ${files.log})`;
    throw new QemuLaunchError('LaunchFailed', `QEMU failed to start: ${reason}`, stderr, outcome.code);
  }

  const pid = await probe(files.dir);
  if (pid === undefined) {
    await killLeftover(files);
    const stderr = await readText(files.log);
    throw new QemuLaunchError('LaunchFailed', `QEMU reported a successful start but is not running: ${firstQemuLine(stderr) || `see ${files.log}`}`, stderr, 0);
  }
  if (prio) {
    // -daemonize's setsid() made a new autogroup of nice 0, which would weigh as much as the
    // agent's whole session whatever the threads' nice; and the daemon may have forked before
    // the launcher joined its cgroup (a v2 move takes every thread of the process along).
    // Each QEMU is a group of its own, so the groups' weights add up: at the lightest (nice 19,
    // weight 15) 50 guests weigh 750 against the control plane's 1024; at nice 10 (110) they
    // would weigh 5500 and leave it a sixth of the CPU (bench/RESULTS-issue11.md).
    await applyLaunchWeight(pid, prio.nice);
    if (prio.cgroupDir) {
      try {
        await joinCgroup(prio.cgroupDir, pid);
      } catch (err) {
        await killLeftover(files);
        throw new QemuLaunchError('LaunchFailed', `cannot move QEMU (pid ${pid}) into its cgroup ${prio.cgroupDir}: ${(err as Error).message}`, '', null, {
          cause: err,
        });
      }
    }
  }
  try {
    const qmp = await QmpClient.connect(files.qmp, { timeoutMs: Math.max(2000, deadline - Date.now()), waitForSocket: true });
    try {
      await qmp.execute('query-status');
    } finally {
      await qmp.close();
    }
  } catch (err) {
    await killLeftover(files);
    const stderr = await readText(files.log);
    throw new QemuLaunchError('StartTimeout', `QEMU started (pid ${pid}) but QMP did not answer, so it was killed: ${(err as Error).message}`, stderr, null, {
      cause: err,
    });
  }
  return { pid, files, serialOffset };
}

/**
 * The live QEMU of `runDir` with its vm.json, or undefined. When none runs, the sockets and
 * pidfile it left are removed (logs and vm.json stay for post-mortems).
 */
export async function adopt(runDir: string): Promise<RunningVm | undefined> {
  const files = runDirFiles(await resolveDir(runDir));
  const pid = await probe(files.dir);
  if (pid === undefined) {
    await removeStale(files);
    return undefined;
  }
  return { pid, runDir: files.dir, files, meta: await readMeta(files) };
}

/**
 * The pid of the live QEMU that owns `runDir`, or undefined; no side effects. The pid in the
 * pidfile counts only if that process is alive (not a zombie) and was started with this run
 * directory's pidfile, so a recycled pid is never mistaken for the VM.
 */
export async function probe(runDir: string): Promise<number | undefined> {
  const files = runDirFiles(await resolveDir(runDir));
  const pid = await readPid(files.pidfile);
  if (pid === undefined || !(await isAlive(pid))) return undefined;
  const args = await readCmdline(pid);
  if (!args) return undefined;
  const i = args.findIndex((a) => a === '-pidfile' || a === '--pidfile');
  return i >= 0 && args[i + 1] === files.pidfile ? pid : undefined;
}

/** Subdirectories of `root` with a live QEMU (for re-adoption at agent start), by name. */
export async function listRunDirs(root: string): Promise<RunningVm[]> {
  let names: string[];
  try {
    names = (await readdir(root, { withFileTypes: true }))
      .filter((e) => e.isDirectory())
      .map((e) => e.name)
      .sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: RunningVm[] = [];
  for (const name of names) {
    const files = runDirFiles(await resolveDir(path.join(root, name)));
    const pid = await probe(files.dir);
    if (pid !== undefined) out.push({ pid, runDir: files.dir, files, meta: await readMeta(files) });
  }
  return out;
}

/** Sends `signal` to the QEMU of `runDir`; returns its pid, or undefined when none runs. */
export async function kill(runDir: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | undefined> {
  const pid = await probe(runDir);
  if (pid === undefined) return undefined;
  try {
    process.kill(pid, signal);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return undefined;
    throw err;
  }
  return pid;
}

/** Polls /proc until `pid` is gone or a zombie; false if it still runs after timeoutMs. */
export async function waitExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!(await isAlive(pid))) return true;
    if (Date.now() >= deadline) return false;
    await sleep(50);
  }
}

/**
 * SIGTERM (QEMU stops the guest at once, like pulling the plug, but flushes its disks), then
 * SIGKILL after graceMs; removes what the process left. True when no QEMU runs there any more.
 */
export async function terminate(runDir: string, opts: { graceMs?: number } = {}): Promise<boolean> {
  const pid = await kill(runDir, 'SIGTERM');
  let gone = pid === undefined || (await waitExit(pid, opts.graceMs ?? 10_000));
  if (!gone && pid !== undefined) {
    await kill(runDir, 'SIGKILL');
    gone = await waitExit(pid, 5000);
  }
  if (gone) await removeStale(runDirFiles(await resolveDir(runDir)));
  return gone;
}

/**
 * Terminates every QEMU under `root` (`root/<namespace>/<run dir>`, the agent's vms directory)
 * at once: the fence's and the watchdog's kill. Resolves with how many ran.
 */
export async function terminateAll(root: string, opts: { graceMs?: number } = {}): Promise<number> {
  const running: RunningVm[] = [];
  let namespaces: string[] = [];
  try {
    namespaces = await readdir(root);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  for (const ns of namespaces) running.push(...(await listRunDirs(path.join(root, ns))));
  await Promise.all(running.map((vm) => terminate(vm.runDir, opts)));
  return running.length;
}

/**
 * A socket to the guest's first serial port. QEMU serves one client at a time: a second one
 * connects but sees nothing until the first disconnects. serial.log records either way.
 */
export function attachSerial(runDir: string, opts: { timeoutMs?: number } = {}): Promise<net.Socket> {
  const file = runDirFiles(runDir).serial;
  const timeoutMs = opts.timeoutMs ?? 5000;
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path: file });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new QemuProcessError('StartTimeout', `could not connect to ${file} within ${timeoutMs} ms: QEMU is hung or the host is overloaded`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      resolve(socket);
    });
    const onError = (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      reject(
        new QemuProcessError(
          'Exited',
          `cannot attach to the serial console ${file} (${err.code ?? err.message}): is the VM running? Its output so far is in serial.log`,
          { cause: err },
        ),
      );
    };
    socket.once('error', onError);
  });
}

/** Everything the guest printed on its serial console in this run directory ('' if nothing). */
export async function readSerialLog(runDir: string): Promise<string> {
  return readText(runDirFiles(runDir).serialLog);
}

/** Current size of serial.log in bytes: a `since` for waitForSerial that skips what is there. */
export async function serialLogSize(runDir: string): Promise<number> {
  return sizeOf(runDirFiles(runDir).serialLog);
}

export interface SerialMatch {
  /** The match; text is decoded as latin1, so byte offsets and string indices agree. */
  match: RegExpExecArray;
  /** Byte offset in serial.log just after the match: the `since` for the next wait. */
  offset: number;
}

export interface WaitSerialOptions {
  /** Byte offset in serial.log to start at (default 0: the whole log). */
  since?: number;
  /** Default 100 ms. */
  pollMs?: number;
}

/**
 * Resolves when serial.log (from `since`) matches `pattern` (a string matches as a substring).
 * Rejects with code SerialTimeout after timeoutMs, or Exited as soon as the QEMU that was
 * running when the wait began (or started during it) is gone without the output appearing.
 */
export async function waitForSerial(runDir: string, pattern: RegExp | string, timeoutMs: number, opts: WaitSerialOptions = {}): Promise<SerialMatch> {
  const file = runDirFiles(runDir).serialLog;
  const re =
    typeof pattern === 'string' ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : new RegExp(pattern.source, pattern.flags.replace(/[gy]/g, ''));
  const pollMs = opts.pollMs ?? 100;
  const deadline = Date.now() + timeoutMs;
  let pos = opts.since ?? 0;
  let base = pos; // byte offset of text[0]
  let text = '';
  let sawAlive = false;
  let nextProbe = 0;
  for (;;) {
    const read = await readFrom(file, pos);
    if (read.truncated) {
      // A new launch rotated the log: start over on the new one.
      pos = base = 0;
      text = '';
      continue;
    }
    text += read.data.toString('latin1');
    pos += read.data.length;
    const m = re.exec(text);
    if (m) return { match: m, offset: base + m.index + m[0].length };
    if (text.length > 1024 * 1024) {
      // Keep the tail only: an hour of counter lines must not grow without bound.
      const cut = text.length - 64 * 1024;
      text = text.slice(cut);
      base += cut;
    }
    if (Date.now() >= deadline) {
      throw new QemuProcessError(
        'SerialTimeout',
        `no serial output matching ${re} in ${file} within ${timeoutMs} ms (last line: ${JSON.stringify(lastLine(text))}): ` +
          `the guest is slow (TCG), stuck in boot or prints elsewhere; read the whole log with readSerialLog`,
      );
    }
    if (Date.now() >= nextProbe) {
      nextProbe = Date.now() + 500;
      const alive = (await probe(runDir)) !== undefined;
      if (alive) sawAlive = true;
      else if (sawAlive) {
        // It may have printed the pattern just before exiting.
        const last = await readFrom(file, pos);
        if (!last.truncated) {
          text += last.data.toString('latin1');
          const m2 = re.exec(text);
          if (m2) return { match: m2, offset: base + m2.index + m2[0].length };
        }
        throw new QemuProcessError(
          'Exited',
          `QEMU in ${runDirFiles(runDir).dir} exited before its serial output matched ${re} (last line: ${JSON.stringify(lastLine(text))}); see qemu.log there for why`,
        );
      }
    }
    await sleep(pollMs);
  }
}

// ---- internals ----

function checkArgv(argv: readonly string[], opts: LaunchOptions): void {
  const roles = (opts.chardevs ?? []).map((c) => c.role);
  if (new Set(roles).size !== roles.length) {
    throw new QemuProcessError('InvalidArgument', `chardevs lists a role twice (${roles.join(', ')}): the run directory has one serial.sock and one qga.sock`);
  }
  for (const c of opts.chardevs ?? []) {
    if (!/^[A-Za-z][\w.-]*$/.test(c.id))
      throw new QemuProcessError('InvalidArgument', `chardev id ${JSON.stringify(c.id)} is not a QEMU id: use letters, digits, '-', '.', '_'`);
  }
  for (const a of argv) {
    const opt = a.startsWith('--') ? a.slice(1) : a;
    if (OWNED_OPTIONS.has(opt)) {
      throw new QemuProcessError(
        'InvalidArgument',
        `argv must not contain ${a}: launch() sets the run directory's sockets, pidfile, logging and daemon mode itself (see the chardevs, vnc and noShutdown options)`,
      );
    }
  }
}

function checkRunDir(files: RunDirFiles): void {
  // QEMU's option syntax splits on commas; doubling them works for chardevs but not everywhere.
  if (files.dir.includes(',') || files.dir.includes('\n')) {
    throw new QemuProcessError(
      'InvalidRunDir',
      `run directory ${files.dir} contains a comma or newline, which QEMU's option syntax cannot carry: use a plain path`,
    );
  }
  const sockets = [files.qmp, files.serial, files.vnc, files.qga];
  for (const s of sockets) {
    if (Buffer.byteLength(s) > MAX_SOCKET_PATH) {
      throw new QemuProcessError(
        'InvalidRunDir',
        `socket path ${s} is longer than the ${MAX_SOCKET_PATH} bytes a unix socket allows: use a shorter run directory root`,
      );
    }
  }
}

/** The run-directory options appended to the caller's argv. */
function runDirArgs(files: RunDirFiles, opts: LaunchOptions): string[] {
  const args = ['-chardev', `socket,id=${CHARDEV_IDS.qmp},path=${files.qmp},server=on,wait=off`, '-mon', `chardev=${CHARDEV_IDS.qmp},mode=control`];
  const chardevs = opts.chardevs ?? [{ id: CHARDEV_IDS.serial, role: 'serial-console' }];
  for (const c of chardevs) {
    if (c.role === 'serial-console') {
      // logfile gets every byte the guest writes, also while no client is attached.
      args.push('-chardev', `socket,id=${c.id},path=${files.serial},server=on,wait=off,logfile=${files.serialLog},logappend=on`);
    } else {
      args.push('-chardev', `socket,id=${c.id},path=${files.qga},server=on,wait=off`);
    }
  }
  if (!opts.chardevs) args.push('-serial', `chardev:${CHARDEV_IDS.serial}`);
  if (opts.vnc) args.push('-vnc', `unix:${files.vnc}`);
  if (opts.noShutdown) args.push('-no-shutdown');
  // With -daemonize QEMU points stderr at /dev/null once started unless a log file is set (-D
  // needs a -d mask to count); then later messages (I/O errors, "terminating on signal") land
  // in qemu.log too. guest_errors only logs what a guest does wrong, which is worth keeping.
  args.push('-pidfile', files.pidfile, '-D', files.log, '-d', 'guest_errors', '-daemonize');
  return args;
}

type LauncherOutcome = { error: Error } | { timedOut: boolean; code: number | null; signal: NodeJS.Signals | null };

/**
 * Runs the launching QEMU process. With -daemonize it exits once the daemon has initialised
 * (0) or failed (1), so its exit status is the startup verdict; the daemon is not our child.
 */
function runLauncher(
  binary: string,
  argv: string[],
  logFd: number,
  env: NodeJS.ProcessEnv | undefined,
  timeoutMs: number,
  onSpawn?: (pid: number) => void,
): Promise<LauncherOutcome> {
  return new Promise((resolve) => {
    // detached: its own session, so a signal to the agent's process group never reaches it.
    const child = spawn(binary, argv, { detached: true, stdio: ['ignore', logFd, logFd], env: env ?? process.env });
    if (child.pid !== undefined) onSpawn?.(child.pid);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      resolve({ error });
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ timedOut, code, signal });
    });
  });
}

/** After a failed start: kill a daemon that got as far as its pidfile, and clear the sockets. */
async function killLeftover(files: RunDirFiles): Promise<void> {
  const pid = await probe(files.dir);
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
    await waitExit(pid, 5000);
  }
  await removeStale(files);
}

/** Sockets and pidfile of a QEMU that is gone (SIGKILL leaves them; QEMU never removes vnc.sock). */
async function removeStale(files: RunDirFiles): Promise<void> {
  for (const f of [files.qmp, files.serial, files.vnc, files.qga, files.pidfile]) {
    try {
      await unlink(f);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

/** Moves `file` to `file.1` when it is larger than `maxBytes` (0: whenever it exists). */
async function rotate(file: string, maxBytes: number): Promise<void> {
  const size = await sizeOf(file, -1);
  if (size > maxBytes || (maxBytes === 0 && size >= 0)) await rename(file, `${file}.1`);
}

async function resolveDir(runDir: string): Promise<string> {
  try {
    return await realpath(runDir);
  } catch {
    return path.resolve(runDir);
  }
}

async function readPid(pidfile: string): Promise<number | undefined> {
  try {
    const pid = Number.parseInt((await readFile(pidfile, 'utf8')).trim(), 10);
    return Number.isSafeInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Alive = exists and is not a zombie. QEMU is re-parented to init, and an init that does not
 * reap (some container inits) leaves exited QEMUs as zombies that still have a /proc entry.
 */
async function isAlive(pid: number): Promise<boolean> {
  let st: string;
  try {
    st = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  // "pid (comm) S ...": comm may hold spaces and parentheses, so read after the last ')'.
  const state = st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X' && state !== 'x';
}

async function readCmdline(pid: number): Promise<string[] | undefined> {
  try {
    const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return raw.split('\0').filter((a, i, all) => a !== '' || i < all.length - 1);
  } catch {
    return undefined;
  }
}

async function readMeta(files: RunDirFiles): Promise<VmMetadata> {
  try {
    const parsed = JSON.parse(await readFile(files.meta, 'utf8')) as unknown;
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return { meta: {} };
    const m = parsed as Record<string, unknown>;
    const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
    const meta: Record<string, string> = {};
    if (typeof m.meta === 'object' && m.meta !== null) {
      for (const [k, v] of Object.entries(m.meta)) if (typeof v === 'string') meta[k] = v;
    }
    const out: VmMetadata = { meta };
    for (const key of ['uid', 'namespace', 'name', 'binary', 'launchedAt'] as const) {
      const v = str(m[key]);
      if (v !== undefined) out[key] = v;
    }
    if (Array.isArray(m.argv)) out.argv = m.argv.map(String);
    return out;
  } catch {
    return { meta: {} };
  }
}

async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, JSON.stringify(value, null, 2) + '\n', { mode: 0o640 });
  await rename(tmp, file);
}

async function sizeOf(file: string, missing = 0): Promise<number> {
  try {
    return (await stat(file)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return missing;
    throw err;
  }
}

async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/** Bytes of `file` from `pos` on (at most `max` per call); truncated when the file shrank (a rotated log). */
export async function readFrom(file: string, pos: number, max = 4 * 1024 * 1024): Promise<{ data: Buffer; truncated: boolean }> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { data: Buffer.alloc(0), truncated: pos > 0 };
    throw err;
  }
  try {
    const { size } = await fh.stat();
    if (size < pos) return { data: Buffer.alloc(0), truncated: true };
    const len = Math.min(size - pos, max);
    if (len === 0) return { data: Buffer.alloc(0), truncated: false };
    const data = Buffer.alloc(len);
    const { bytesRead } = await fh.read(data, 0, len, pos);
    return { data: data.subarray(0, bytesRead), truncated: false };
  } finally {
    await fh.close();
  }
}

function lastLine(text: string): string {
  const lines = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
  return (lines.at(-1) ?? '').slice(0, 200);
}
