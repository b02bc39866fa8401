/**
 * Forklift's migration hooks (Hook kind, Plan.spec.vms[].hooks; docs/forklift.md "Hooks").
 * Forklift runs a hook's container image as a Job; Vessel runs no images. A Hook here names,
 * in an annotation, either a script the administrator registered (a file in the controller
 * manager's `--forklift-hook-dir`, by name only: a tenant cannot make it run anything else) or
 * an http(s) URL that gets a POST of the plan and the VM as JSON. URLs are checked like the
 * DataImportCron poll's (./egress.ts: never the control plane's own addresses, link-local or
 * loopback unless allowed). `spec.deadline` (seconds) bounds either; a failure is the reason
 * the VM's hook step fails. `spec.image` and `spec.playbook` are kept and not run: a Warn concern.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, realpath, stat } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import { join, sep } from 'node:path';
import { forklift } from '@vessel/api';
import { checkedLookup, pollRefusal } from '../egress.ts';
import type { Concern } from './validation.ts';

export const { HOOK_SCRIPT_ANNOTATION, HOOK_URL_ANNOTATION } = forklift;
/** A hook without `spec.deadline` may run this long. */
export const DEFAULT_DEADLINE_S = 600;

export interface HookOptions {
  /** The directory of registered scripts (`--forklift-hook-dir`); none: script hooks are refused. */
  hookDir?: string;
  /** URL hooks may reach loopback and this host (labs and tests), as `--allow-loopback-imports`. */
  allowLoopback?: boolean;
}

export class HookError extends Error {
  constructor(
    readonly code: 'HookNotValid' | 'HookFailed',
    message: string,
  ) {
    super(message);
    this.name = 'HookError';
  }
}

type Obj = Record<string, unknown>;
const o = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});

export type HookTarget = { kind: 'script'; name: string } | { kind: 'url'; url: URL };

/** What a Hook object runs, or HookError HookNotValid saying why it cannot. */
export function hookTarget(hook: { metadata?: { annotations?: Record<string, string> } }): HookTarget {
  const ann = hook.metadata?.annotations ?? {};
  const script = ann[HOOK_SCRIPT_ANNOTATION];
  const url = ann[HOOK_URL_ANNOTATION];
  if (script && url) throw new HookError('HookNotValid', `set one of ${HOOK_SCRIPT_ANNOTATION} and ${HOOK_URL_ANNOTATION}, not both`);
  if (script) {
    if (!forklift.HOOK_SCRIPT_NAME.test(script))
      throw new HookError('HookNotValid', `${HOOK_SCRIPT_ANNOTATION}: "${script}" is not a script name (letters, digits, '.', '_', '-')`);
    return { kind: 'script', name: script };
  }
  if (url) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new HookError('HookNotValid', `${HOOK_URL_ANNOTATION}: "${url}" is not a URL`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new HookError('HookNotValid', `${HOOK_URL_ANNOTATION}: only http and https URLs`);
    if (u.username || u.password) throw new HookError('HookNotValid', `${HOOK_URL_ANNOTATION}: no credentials in the URL`);
    return { kind: 'url', url: u };
  }
  throw new HookError(
    'HookNotValid',
    `Vessel runs no container images: annotate the Hook with ${HOOK_SCRIPT_ANNOTATION} (a script the administrator registered) or ${HOOK_URL_ANNOTATION}`,
  );
}

/** The registered script's path, or HookNotValid: a regular executable file directly in the hook directory (symlinks resolved first). */
export async function scriptPath(name: string, opts: HookOptions): Promise<string> {
  if (!opts.hookDir) throw new HookError('HookNotValid', 'no hook directory is configured (--forklift-hook-dir): script hooks are not available');
  const dir = await realpath(opts.hookDir);
  let path: string;
  try {
    path = await realpath(join(dir, name));
    if (!path.startsWith(dir + sep) || path.slice(dir.length + 1).includes(sep)) throw new Error('outside');
    if (!(await stat(path)).isFile()) throw new Error('not a file');
    await access(path, constants.X_OK);
  } catch {
    throw new HookError('HookNotValid', `script "${name}" is not registered (an executable file in the hook directory)`);
  }
  return path;
}

/** The Hook's concerns: Ready when what it names can run; a Warn that its image is not run. */
export async function hookConcerns(hook: { metadata?: { annotations?: Record<string, string> }; spec?: unknown }, opts: HookOptions): Promise<Concern[]> {
  const out: Concern[] = [];
  const spec = o(hook.spec);
  if (spec.image || spec.playbook)
    out.push({
      type: 'ImageNotRun',
      status: 'True',
      category: 'Warn',
      reason: 'NotSupported',
      message: 'Vessel does not run hook images or playbooks; the hook runs the script or URL its annotations name.',
    });
  try {
    const t = hookTarget(hook);
    if (t.kind === 'script') await scriptPath(t.name, opts);
    out.push({ type: 'Ready', status: 'True', category: 'Required', message: 'The hook is ready.' });
  } catch (e) {
    if (!(e instanceof HookError)) throw e;
    out.unshift({ type: 'HookNotValid', status: 'True', category: 'Critical', reason: 'NotValid', message: e.message });
  }
  return out;
}

/** What a hook gets (stdin of a script, body of a URL hook). */
export interface HookPayload {
  step: 'PreHook' | 'PostHook';
  plan: unknown;
  vm: { id: string; name: string; targetName: string; namespace: string };
  migration: { name: string; namespace: string };
}

/** Runs the hook to its end within its deadline; HookError with the reason when it fails. */
export async function runHook(
  hook: { metadata?: { annotations?: Record<string, string> }; spec?: unknown },
  payload: HookPayload,
  opts: HookOptions,
): Promise<void> {
  const t = hookTarget(hook);
  const deadline = Number(o(hook.spec).deadline);
  const ms = (Number.isFinite(deadline) && deadline > 0 ? deadline : DEFAULT_DEADLINE_S) * 1000;
  const body = JSON.stringify(payload);
  if (t.kind === 'script') return runScript(await scriptPath(t.name, opts), t.name, body, ms);
  return post(t.url, body, ms, !!opts.allowLoopback);
}

function runScript(path: string, name: string, body: string, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    // No shell, a minimal environment: the script gets the payload on stdin only.
    // Its own process group, so the deadline kills what the script started too.
    const child = spawn(path, [], { stdio: ['pipe', 'ignore', 'pipe'], env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, detached: true });
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }, ms);
    let err = '';
    child.stderr.on('data', (c: Buffer) => {
      err = (err + c.toString('utf8')).slice(-2000);
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(body);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new HookError('HookFailed', `script ${name}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0 && !late) return resolve();
      const tail = err.trim().split('\n').slice(-3).join(' | ');
      const why = late ? `deadline of ${ms / 1000} s passed` : `exit ${code ?? signal}`;
      reject(new HookError('HookFailed', `script ${name}: ${why}${tail ? `: ${tail}` : ''}`));
    });
  });
}

function post(url: URL, body: string, ms: number, allowLoopback: boolean): Promise<void> {
  // One message for every unreachable target: the reply does not tell a tenant what listens where.
  const unreachable = () =>
    new HookError('HookFailed', `${url.host} is unreachable from the controllers (refused address, closed port, no such name or no answer)`);
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (isIP(host) && pollRefusal(host, allowLoopback)) return Promise.reject(unreachable());
  const lib = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(
      url,
      {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'user-agent': 'vessel-forklift-hook' },
        lookup: checkedLookup(allowLoopback) as never,
      },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => {
          if (text.length < 300) text += c.toString('utf8');
        });
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) resolve();
          else reject(new HookError('HookFailed', `${url.host} answered HTTP ${status}${text.trim() ? `: ${text.trim().slice(0, 300)}` : ''}`));
        });
        res.on('error', () => reject(unreachable()));
      },
    );
    req.setTimeout(ms, () => req.destroy(new HookError('HookFailed', `${url.host}: deadline of ${ms / 1000} s passed`)));
    req.on('error', (e) => reject(e instanceof HookError ? e : unreachable()));
    req.end(body);
  });
}
