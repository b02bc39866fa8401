/**
 * Guest conversion with virt-v2v (Forklift's ImageConversion step, docs/forklift.md): the
 * Forklift controller asks through the `vessel.io/convert` annotation on a migrated VM's first
 * disk claim (@vessel/api forklift); the agent of the node holding the volumes runs
 * `virt-v2v-in-place` on the qcow2 files, described to it as a libvirt domain, and answers in
 * `vessel.io/conversion` (phase, stage, virt-v2v's error). One conversion at a time per node:
 * each boots a libguestfs appliance, which under TCG is minutes of both cores.
 *
 * The files are found as every other agent file operation finds them: the claims' own
 * `vessel.io/volume-path`, checked to be in the namespace's directory of a pool on this node.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { annotationsOf, forklift, phaseOf, refs, storage } from '@vessel/api';
import type { Client } from '@vessel/client';
import { Controller, type Informer, type KubeObject, type Log } from '@vessel/runtime';
import { containedPath, PathError, type Pool } from './pools.ts';

type Obj = Record<string, unknown>;
const { PVCS, VMIS } = refs;
const { CONVERT_REQUEST, CONVERSION_STATUS } = forklift;
type Request = forklift.ConversionRequest;
type Status = forklift.ConversionStatus;

/** virt-v2v-in-place's progress messages, in order (their beginnings): the step's progress. */
export const STAGES = [
  'Setting up the source',
  'Opening the source',
  'Inspecting the source',
  'Checking for sufficient free disk space',
  'Converting',
  'Finishing off',
];
/** A conversion that runs longer is stopped (TCG, a loaded node: normally a few minutes). */
const TIMEOUT_MS = 60 * 60_000;

const xmlEscape = (s: string): string => s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);

/**
 * The libvirt domain virt-v2v-in-place reads (`-i libvirtxml`): the VM's disks as qcow2 files in
 * boot order, its firmware, memory and CPUs (virt-v2v picks drivers and boot config from them).
 */
export function domainXml(req: Pick<Request, 'name' | 'firmware' | 'memoryMB' | 'cpus'>, files: string[]): string {
  const disks = files
    .map(
      (f, i) =>
        `    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${xmlEscape(f)}'/><target dev='sd${String.fromCharCode(97 + i)}' bus='scsi'/></disk>`,
    )
    .join('\n');
  return `<domain type='kvm'>
  <name>${xmlEscape(req.name)}</name>
  <memory unit='MiB'>${Math.max(1, Math.round(req.memoryMB))}</memory>
  <vcpu>${Math.max(1, Math.round(req.cpus))}</vcpu>
  <os${req.firmware === 'efi' ? " firmware='efi'" : ''}><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
${disks}
  </devices>
</domain>
`;
}

/** One line of `--machine-readable` output: `{"type": "message"|"warning"|"error"|"info", "message": ...}`; other lines: undefined. */
export function parseLine(line: string): { type: string; message: string } | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    const v = JSON.parse(line) as Obj;
    return typeof v.type === 'string' && typeof v.message === 'string' ? { type: v.type, message: v.message.trim() } : undefined;
  } catch {
    return undefined;
  }
}

/** How many STAGES a progress message means are done (its own index), or -1 when it is none of them. */
export const stageIndex = (message: string): number => STAGES.findIndex((s) => message.startsWith(s));

/** The reason a failed run gives: virt-v2v's last error message, else the last lines it wrote to stderr. */
export function failureReason(errors: string[], stderr: string, code: number | null): string {
  if (errors.length) return errors[errors.length - 1].replace(/^virt-v2v(-in-place)?: error: /, '');
  const tail = stderr
    .trim()
    .split('\n')
    .filter((l) => l && !l.startsWith('If reporting bugs') && !l.includes('-v -x'))
    .slice(-3)
    .join(' ');
  return tail || `virt-v2v-in-place exited with ${code}`;
}

/** virt-v2v's version when virt-v2v-in-place and the NBD tools it runs (nbdkit, libnbd's nbdinfo) all answer; else undefined. */
export async function virtV2vVersion(): Promise<string | undefined> {
  const out = (cmd: string): Promise<string | undefined> =>
    new Promise((resolve) => {
      const p = spawn(cmd, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
      let s = '';
      p.stdout.on('data', (c: Buffer) => (s += c.toString()));
      p.on('error', () => resolve(undefined));
      p.on('close', (code) => resolve(code === 0 ? s : undefined));
    });
  const [v2v, nbdkit, nbdinfo] = await Promise.all([out('virt-v2v-in-place'), out('nbdkit'), out('nbdinfo')]);
  const version = v2v?.match(/(\d+\.\d+[\w.-]*)/)?.[1];
  return version && nbdkit !== undefined && nbdinfo !== undefined && /^[\w.-]{1,63}$/.test(version) ? version : undefined;
}

export interface ConversionOptions {
  nodeName: string;
  pools: Map<string, Pool>;
  /** virt-v2v's version on this node (virtV2vVersion()), undefined when it is not installed. */
  version: string | undefined;
  /**
   * The node runs guests with TCG (agent vms/accel.ts): libguestfs is told so, since it tries
   * KVM whenever /dev/kvm exists, and its appliance hangs in the firmware where KVM is broken.
   */
  tcg?: boolean;
  log?: Log;
  /** The command (tests put a stand-in here); default virt-v2v-in-place. */
  command?: string;
}

const parse = <T>(v: string | undefined): T | undefined => {
  try {
    return v ? (JSON.parse(v) as T) : undefined;
  } catch {
    return undefined;
  }
};

export class ConversionController extends Controller {
  private readonly pvcs: Informer;
  private readonly abort = new AbortController();
  /** Request ids run by this process: a Running status left by an earlier agent is run again. */
  private readonly mine = new Set<string>();

  constructor(
    client: Client,
    private readonly opts: ConversionOptions,
  ) {
    super('conversion', client, opts.log, 1);
    this.pvcs = this.inform(PVCS, (p) => (annotationsOf(p)[CONVERT_REQUEST] ? [`${p.metadata.namespace}/${p.metadata.name}`] : []));
  }

  override async stop(): Promise<void> {
    this.abort.abort();
    await super.stop();
  }

  protected async reconcile(key: string): Promise<void> {
    const pvc = this.pvcs.get(key);
    if (!pvc || pvc.metadata.deletionTimestamp) return;
    const ann = annotationsOf(pvc);
    if (ann[storage.SELECTED_NODE] !== this.opts.nodeName) return;
    const req = parse<Request>(ann[CONVERT_REQUEST]);
    if (!req || typeof req.id !== 'string' || !Array.isArray(req.claims)) return;
    const prev = parse<Status>(ann[CONVERSION_STATUS]);
    if (prev?.id === req.id && (prev.phase !== 'Running' || this.mine.has(req.id))) return;
    this.mine.add(req.id);
    const ns = pvc.metadata.namespace!;
    const started = new Date().toISOString();
    // Answers in the order given (stage updates are not awaited by the run).
    let chain = Promise.resolve();
    const answer = (s: Omit<Status, 'id' | 'started'>): Promise<void> =>
      (chain = chain.then(() => this.answer(ns, pvc.metadata.name, { id: req.id, started, ...s })));
    if (!this.opts.version)
      return answer({ phase: 'Failed', message: `NotInstalled: virt-v2v is not installed on node ${this.opts.nodeName}`, completed: started });
    // Every disk: a claim of this namespace, its volume on this node, no VM running on it.
    const files: string[] = [];
    for (const name of req.claims) {
      const c = this.pvcs.get(`${ns}/${name}`);
      const a = c ? annotationsOf(c) : {};
      if (!c || !a[storage.VOLUME_PATH] || a[storage.SELECTED_NODE] !== this.opts.nodeName)
        return answer({ phase: 'Failed', message: `VolumeNotReady: claim ${name} has no volume on node ${this.opts.nodeName}`, completed: started });
      try {
        files.push(containedPath(this.opts.pools.values(), ns, a[storage.VOLUME_PATH], `${storage.VOLUME_PATH} of claim ${name}`).path);
      } catch (e) {
        if (e instanceof PathError) return answer({ phase: 'Failed', message: `${e.code}: ${e.message}`, completed: started });
        throw e;
      }
    }
    // Read from the API server, not a cache: a VMI made a moment ago must stop the conversion too.
    const vmis = (await this.client.list(VMIS, { namespace: ns })).items as KubeObject[];
    const user = vmis.find((v) => !['Succeeded', 'Failed'].includes(phaseOf(v)) && usesAny(v, req.claims));
    if (user) return answer({ phase: 'Failed', message: `InUse: VirtualMachineInstance ${user.metadata.name} uses the disks`, completed: started });
    await answer({ phase: 'Running', stage: STAGES[0], stages: { completed: 0, total: STAGES.length } });
    const t0 = Date.now();
    this.log(`conversion: ${key}: virt-v2v-in-place on ${files.length} disk(s)`);
    const res = await this.runV2v(req, files, (stage, i) => void answer({ phase: 'Running', stage, stages: { completed: i, total: STAGES.length } }));
    const seconds = Math.round((Date.now() - t0) / 100) / 10;
    this.log(`conversion: ${key}: ${res.ok ? 'done' : `failed: ${res.reason}`} in ${seconds} s`);
    await answer({
      phase: res.ok ? 'Succeeded' : 'Failed',
      ...(res.ok ? { stages: { completed: STAGES.length, total: STAGES.length } } : { message: `ConversionFailed: ${res.reason}` }),
      ...(res.warnings.length ? { warnings: res.warnings.slice(0, 10) } : {}),
      completed: new Date().toISOString(),
      seconds,
    });
  }

  /** Runs virt-v2v-in-place on the files; `stage` is called as it passes each of STAGES. */
  private async runV2v(
    req: Request,
    files: string[],
    stage: (message: string, index: number) => void,
  ): Promise<{ ok: boolean; reason?: string; warnings: string[] }> {
    const dir = await mkdtemp(join(tmpdir(), 'vessel-v2v-'));
    const errors: string[] = [];
    const warnings: string[] = [];
    let stderr = '';
    try {
      const xml = join(dir, 'domain.xml');
      await writeFile(xml, domainXml(req, files));
      const code = await new Promise<number | null>((resolve) => {
        const p = spawn(this.opts.command ?? 'virt-v2v-in-place', ['-i', 'libvirtxml', xml, '--machine-readable'], {
          // The direct backend: no libvirtd here. The appliance supermin builds is cached in
          // /var/tmp (libguestfs' default) across runs; only the run's scratch goes in `dir`.
          env: {
            ...process.env,
            LIBGUESTFS_BACKEND: process.env.LIBGUESTFS_BACKEND ?? 'direct',
            LIBGUESTFS_CACHEDIR: process.env.LIBGUESTFS_CACHEDIR ?? '/var/tmp',
            ...(this.opts.tcg && !process.env.LIBGUESTFS_BACKEND_SETTINGS ? { LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' } : {}),
            TMPDIR: dir,
          },
          stdio: ['ignore', 'pipe', 'pipe'],
          signal: AbortSignal.any([this.abort.signal, AbortSignal.timeout(TIMEOUT_MS)]),
          detached: false,
        });
        let buf = '';
        p.stdout.on('data', (c: Buffer) => {
          buf += c.toString();
          for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
            const m = parseLine(buf.slice(0, i));
            buf = buf.slice(i + 1);
            if (!m) continue;
            if (m.type === 'error') errors.push(m.message);
            else if (m.type === 'warning') warnings.push(m.message);
            else if (m.type === 'message' && stageIndex(m.message) >= 0) stage(m.message, stageIndex(m.message));
          }
        });
        p.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
        p.on('error', (e) => {
          stderr += `\n${e.message}`;
          resolve(null);
        });
        p.on('close', (c) => resolve(c));
      });
      return code === 0 ? { ok: true, warnings } : { ok: false, reason: failureReason(errors, stderr, code), warnings };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  private async answer(ns: string, name: string, s: Status): Promise<void> {
    try {
      await this.client.patch(PVCS, name, { metadata: { annotations: { [CONVERSION_STATUS]: JSON.stringify(s) } } }, { namespace: ns });
    } catch (e) {
      this.log(`conversion: ${ns}/${name}: status: ${e instanceof Error ? e.message : e}`);
    }
  }
}

/** Whether a VMI's volumes name any of the claims (directly or through a DataVolume of that name). */
export function usesAny(vmi: KubeObject, claims: string[]): boolean {
  const vols = ((((vmi.spec ?? {}) as Obj).volumes as Obj[] | undefined) ?? []).map((v) => {
    const dv = v.dataVolume as Obj | undefined;
    const pvc = v.persistentVolumeClaim as Obj | undefined;
    return String(dv?.name ?? pvc?.claimName ?? '');
  });
  return vols.some((c) => claims.includes(c));
}
