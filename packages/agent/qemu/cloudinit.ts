/**
 * Cloud-init seed ISOs for cloudInitNoCloud and cloudInitConfigDrive volumes, built with
 * genisoimage the way cloud-init's datasources expect them: NoCloud is volume label `cidata`
 * with `user-data`, `meta-data` and `network-config` at the root; ConfigDrive is label
 * `config-2` with `openstack/latest/{user_data,meta_data.json,network_data.json}`.
 * Secret references are resolved by the caller, which passes the plain strings. The ISO is
 * written under a temporary name and renamed, so `dest` is never half-written.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { V1Volume, V1VirtualMachineInstanceSpec } from '@kubevirt-ui-ext/kubevirt-api/kubevirt';

export type CloudInitKind = 'noCloud' | 'configDrive';

export interface CloudInitIsoOptions {
  kind: CloudInitKind;
  /** User data as text, or base64 (not both). Missing: an empty user-data file. */
  userData?: string;
  userDataBase64?: string;
  /** Network config as text, or base64 (not both). Missing: no network file. */
  networkData?: string;
  networkDataBase64?: string;
  metaData: {
    instanceId: string;
    localHostname: string;
    /** ConfigDrive's `uuid` (cloud-init takes the instance id from it); default instanceId. */
    uuid?: string;
  };
  /** Where the ISO goes; its directory must exist. */
  dest: string;
  /** Kill genisoimage after this long (ms); default 60 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export type CloudInitErrorCode = 'InvalidInput' | 'GenisoimageFailed' | 'IOError';

export class CloudInitError extends Error {
  readonly code: CloudInitErrorCode;
  constructor(code: CloudInitErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CloudInitError';
    this.code = code;
  }
}

/** The volume labels cloud-init looks for. */
export const CLOUD_INIT_LABELS: Readonly<Record<CloudInitKind, string>> = { noCloud: 'cidata', configDrive: 'config-2' };

function payload(text: string | undefined, b64: string | undefined, what: string): Buffer | undefined {
  if (text !== undefined && b64 !== undefined) throw new CloudInitError('InvalidInput', `${what}: set either the text or the base64 form, not both`);
  if (text !== undefined) return Buffer.from(text, 'utf8');
  if (b64 === undefined) return undefined;
  const clean = b64.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 === 1) throw new CloudInitError('InvalidInput', `${what}Base64 is not valid base64`);
  return Buffer.from(clean, 'base64');
}

/** The files of the seed, by path inside the ISO. */
export function cloudInitFiles(opts: Omit<CloudInitIsoOptions, 'dest' | 'timeoutMs' | 'signal'>): Map<string, Buffer> {
  const user = payload(opts.userData, opts.userDataBase64, 'userData') ?? Buffer.alloc(0);
  const network = payload(opts.networkData, opts.networkDataBase64, 'networkData');
  const { instanceId, localHostname } = opts.metaData;
  if (!instanceId) throw new CloudInitError('InvalidInput', 'metaData.instanceId is required');
  const files = new Map<string, Buffer>();
  if (opts.kind === 'noCloud') {
    // JSON strings are valid YAML scalars, so odd characters cannot break the document.
    const meta = `instance-id: ${JSON.stringify(instanceId)}\nlocal-hostname: ${JSON.stringify(localHostname)}\n`;
    files.set('user-data', user);
    files.set('meta-data', Buffer.from(meta, 'utf8'));
    if (network) files.set('network-config', network);
  } else if (opts.kind === 'configDrive') {
    const meta = {
      uuid: opts.metaData.uuid ?? instanceId,
      instance_id: instanceId,
      hostname: localHostname,
      local_hostname: localHostname,
    };
    files.set('openstack/latest/user_data', user);
    files.set('openstack/latest/meta_data.json', Buffer.from(`${JSON.stringify(meta)}\n`, 'utf8'));
    if (network) files.set('openstack/latest/network_data.json', network);
  } else {
    throw new CloudInitError('InvalidInput', `unknown cloud-init kind ${JSON.stringify(opts.kind)}`);
  }
  return files;
}

/** Builds the seed ISO at opts.dest (atomically: temp file, fsync, rename). */
export async function buildCloudInitIso(opts: CloudInitIsoOptions): Promise<void> {
  const files = cloudInitFiles(opts);
  const dir = dirname(opts.dest);
  const tmp = join(dir, `.${basename(opts.dest)}.tmp-${randomBytes(6).toString('hex')}`);
  let stage: string | undefined;
  try {
    stage = await mkdtemp(join(dir, '.cloudinit-stage-'));
    for (const [rel, data] of files) {
      const p = join(stage, rel);
      await mkdir(dirname(p), { recursive: true });
      await writeFile(p, data);
    }
    // Rock Ridge (owner root, world-readable) and Joliet keep the lower-case, dashed names cloud-init reads.
    const args = ['-output', tmp, '-volid', CLOUD_INIT_LABELS[opts.kind], '-joliet', '-rational-rock', '-input-charset', 'utf-8', '-quiet', stage];
    await runGenisoimage(args, opts.timeoutMs ?? 60_000, opts.signal);
    const fh = await open(tmp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, opts.dest);
  } catch (e) {
    await rm(tmp, { force: true });
    if (e instanceof CloudInitError) throw e;
    throw new CloudInitError('IOError', `writing the cloud-init seed ${opts.dest} failed: ${(e as Error).message}`, { cause: e });
  } finally {
    if (stage) await rm(stage, { recursive: true, force: true });
  }
}

function runGenisoimage(args: string[], timeoutMs: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('genisoimage', args, { stdio: ['ignore', 'ignore', 'pipe'], signal, timeout: timeoutMs, killSignal: 'SIGKILL' });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      if (stderr.length < 8192) stderr += d;
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      const hint = e.code === 'ENOENT' ? ' (install the genisoimage package)' : '';
      reject(new CloudInitError('GenisoimageFailed', `genisoimage could not run: ${e.message}${hint}`, { cause: e }));
    });
    child.on('close', (code, sig) => {
      if (code === 0) return resolve();
      const first = stderr.split('\n').find((l) => l.trim()) ?? 'no error output';
      reject(new CloudInitError('GenisoimageFailed', `genisoimage failed (${sig ? `signal ${sig}` : `exit ${code}`}): ${first.trim()}`));
    });
  });
}

/**
 * The options for a VMI's cloud-init volume, as KubeVirt fills them: instance id
 * `<name>.<namespace>`, hostname spec.hostname or the VMI name, ConfigDrive uuid the firmware
 * UUID. Data behind secretRef / networkDataSecretRef comes resolved in `secretData`.
 */
export function cloudInitIsoOptions(args: {
  vmi: { metadata: { name: string; namespace: string }; spec: V1VirtualMachineInstanceSpec };
  volume: V1Volume;
  secretData?: { userData?: string; networkData?: string };
  dest: string;
}): CloudInitIsoOptions {
  const { vmi, volume, secretData, dest } = args;
  const kind: CloudInitKind | undefined = volume.cloudInitNoCloud ? 'noCloud' : volume.cloudInitConfigDrive ? 'configDrive' : undefined;
  const src = volume.cloudInitNoCloud ?? volume.cloudInitConfigDrive;
  if (!kind || !src) throw new CloudInitError('InvalidInput', `volume ${volume.name} is not a cloud-init volume`);
  const fromSecret = (ref: unknown, value: string | undefined, what: string): string | undefined => {
    if (!ref) return undefined;
    if (value === undefined) throw new CloudInitError('InvalidInput', `volume ${volume.name}: the ${what} secret has not been resolved`);
    return value;
  };
  const userSecret = fromSecret(src.secretRef, secretData?.userData, 'user data');
  const netSecret = fromSecret(src.networkDataSecretRef, secretData?.networkData, 'network data');
  return {
    kind,
    userData: userSecret ?? src.userData,
    userDataBase64: userSecret === undefined ? src.userDataBase64 : undefined,
    networkData: netSecret ?? src.networkData,
    networkDataBase64: netSecret === undefined ? src.networkDataBase64 : undefined,
    metaData: {
      instanceId: `${vmi.metadata.name}.${vmi.metadata.namespace}`,
      localHostname: vmi.spec.hostname ?? vmi.metadata.name,
      uuid: vmi.spec.domain?.firmware?.uuid,
    },
    dest,
  };
}
