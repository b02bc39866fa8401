/**
 * `vessel plan create|start|cutover|cancel|describe`: the migration toolkit's plans from the
 * command line (docs/forklift.md, "CLI"). `start` creates a Migration and follows its per-VM
 * pipeline (current step, a bar per disk task) until it Succeeded or Failed. The rendering is
 * pure (status → lines) so it is unit-tested with golden strings; the commands only fetch,
 * write and print.
 */
import type { Command } from 'commander';
import { forklift, refs } from '@vessel/api';
import type { Client, KubeObject } from '@vessel/client';
import { contextOf, out } from '../context.ts';
import { UsageError } from '../errors.ts';
import { toYaml } from '../printers/structured.ts';

const { FORKLIFT_PLANS: PLANS, FORKLIFT_MIGRATIONS: MIGRATIONS } = refs;

type Obj = Record<string, unknown>;
const o = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});

export type Task = Omit<forklift.MigrationTask, 'progress'> & { progress?: forklift.MigrationTask['progress'] };
export type Step = Omit<forklift.MigrationStep, 'progress'> & { progress?: forklift.MigrationTask['progress'] };
export type VmStatus = forklift.MigrationVmStatus;
export interface Condition {
  type: string;
  status: string;
  category?: string;
  reason?: string;
  message?: string;
  items?: string[];
}

export interface PlanOptions {
  provider: string;
  targetNamespace?: string;
  networkMap?: string;
  storageMap?: string;
  vms: string[];
  type?: string;
  targetPowerState?: string;
  /** Forklift's `skipGuestConversion`: no virt-v2v (ImageConversion) for the plan's VMs. */
  skipGuestConversion?: boolean;
  /** Forklift's destination provider; this cluster in Vessel (not checked). */
  destination?: string;
}

/** A VM reference from the command line: `id:X`, `name:X`, 16 hex digits (an OVA inventory id), else a name. */
export function vmRef(arg: string): { id: string } | { name: string } {
  if (arg.startsWith('id:')) return { id: arg.slice(3) };
  if (arg.startsWith('name:')) return { name: arg.slice(5) };
  return /^[0-9a-f]{16}$/.test(arg) ? { id: arg } : { name: arg };
}

/** The Plan `vessel plan create` writes. */
export function buildPlan(name: string, namespace: string, f: PlanOptions): KubeObject {
  if (f.type && f.type !== 'cold' && f.type !== 'warm') throw new UsageError(`--type must be cold or warm, not "${f.type}"`);
  if (f.targetPowerState && !['on', 'off', 'auto'].includes(f.targetPowerState))
    throw new UsageError(`--target-power-state must be on, off or auto, not "${f.targetPowerState}"`);
  if (f.vms.length === 0) throw new UsageError('name at least one --vm');
  const map: Obj = {};
  if (f.networkMap) map.network = { name: f.networkMap, namespace };
  if (f.storageMap) map.storage = { name: f.storageMap, namespace };
  return {
    apiVersion: 'forklift.konveyor.io/v1beta1',
    kind: 'Plan',
    metadata: { name, namespace },
    spec: {
      provider: { source: { name: f.provider, namespace }, destination: { name: f.destination ?? 'host', namespace } },
      targetNamespace: f.targetNamespace ?? namespace,
      map,
      vms: f.vms.map(vmRef),
      ...(f.type ? { type: f.type } : {}),
      ...(f.targetPowerState ? { targetPowerState: f.targetPowerState } : {}),
      ...(f.skipGuestConversion ? { skipGuestConversion: true } : {}),
    },
  };
}

/** `[#####·····]` for completed of total. */
export function bar(completed: number, total: number, width = 20): string {
  const fill = total > 0 ? Math.min(width, Math.max(0, Math.round((completed / total) * width))) : 0;
  return `[${'#'.repeat(fill)}${'·'.repeat(width - fill)}]`;
}

const pct = (completed: number, total: number): number => (total > 0 ? Math.floor(Math.min(100, (completed / total) * 100)) : 0);

/** One disk task: `  web-disk0 [##########··········] 34/68 MB 50%`. */
export function taskLine(t: Task, indent = '  '): string {
  const p = t.progress ?? { total: 0, completed: 0 };
  const unit = t.annotations?.unit ?? '';
  const failed = t.phase === 'Failed' ? ' Failed' : '';
  return `${indent}${t.name} ${bar(p.completed, p.total)} ${p.completed}/${p.total}${unit ? ` ${unit}` : ''} ${pct(p.completed, p.total)}%${failed}`;
}

const vmLabel = (v: VmStatus): string => (v.newName && v.newName !== v.name ? `${v.name} (as ${v.newName})` : v.name);

/** What `plan start` shows of a VM: a line with its current step, then a bar per disk task. Keys let a change be printed alone. */
export function progressLines(vms: VmStatus[]): { key: string; line: string }[] {
  const lines: { key: string; line: string }[] = [];
  for (const v of vms) {
    const steps = v.pipeline ?? [];
    const at = steps.findIndex((s) => s.phase === 'Running' || s.phase === 'Failed');
    let state: string;
    if (v.phase === 'Completed' && (v.conditions ?? []).some((c) => c.type === 'Canceled' && c.status === 'True')) state = 'Canceled';
    else if (v.phase === 'Completed') state = 'Completed';
    else if (v.phase === 'Failed' || v.error) {
      const e = v.error ?? steps.find((s) => s.error)?.error;
      state = `Failed at ${e?.phase ?? v.phase}${e?.reasons?.length ? `: ${e.reasons.join('; ')}` : ''}`;
    } else if (at >= 0) state = `${steps[at].name} (step ${at + 1}/${steps.length})`;
    else state = v.phase || 'Pending';
    lines.push({ key: v.id, line: `${vmLabel(v)}: ${state}` });
    for (const t of steps.find((s) => s.name === 'DiskTransfer')?.tasks ?? []) lines.push({ key: `${v.id}/${t.name}`, line: taskLine(t) });
  }
  return lines;
}

/** The outcome of a Migration from its conditions: running, or done (Succeeded / Failed) with the per-VM reasons. */
export function outcome(m: KubeObject): { done: boolean; failed: boolean; errors: string[] } {
  const st = o(m.status);
  const conds = (st.conditions as Condition[] | undefined) ?? [];
  const isTrue = (type: string) => conds.some((c) => c.type === type && c.status === 'True');
  const notReady = conds.find((c) => c.type === 'PlanNotReady' && c.status === 'True');
  if (notReady) return { done: true, failed: true, errors: [notReady.message ?? 'the plan is not Ready'] };
  const vms = (st.vms as VmStatus[] | undefined) ?? [];
  const errors = vms
    .filter((v) => v.phase === 'Failed' || v.error)
    .map((v) => `VM ${vmLabel(v)}: ${v.error?.phase ?? 'Failed'}: ${(v.error?.reasons ?? ['no reason given']).join('; ')}`);
  if (isTrue('Succeeded')) return { done: true, failed: false, errors };
  if (isTrue('Failed')) return { done: true, failed: true, errors: errors.length ? errors : ['the migration failed'] };
  if (isTrue('Canceled')) return { done: true, failed: true, errors: ['the migration was canceled: every VM was canceled'] };
  return { done: false, failed: false, errors };
}

/** `vessel plan describe`: the plan, its concerns, its VMs and the latest migration's pipeline. */
export function describePlan(plan: KubeObject, migration?: KubeObject): string {
  const spec = o(plan.spec);
  const st = o(plan.status);
  const src = o(o(spec.provider).source);
  const map = o(spec.map);
  const ref = (r: unknown) => (o(r).name ? String(o(r).name) : '<none>');
  const lines = [
    `Name:              ${plan.metadata?.name}`,
    `Namespace:         ${plan.metadata?.namespace}`,
    `Provider:          ${ref(src)}`,
    `Target namespace:  ${String(spec.targetNamespace ?? '')}`,
    `Type:              ${String(spec.type ?? (spec.warm ? 'warm' : 'cold'))}`,
    `Target power:      ${String(spec.targetPowerState ?? 'auto')}`,
    `Network map:       ${ref(map.network)}`,
    `Storage map:       ${ref(map.storage)}`,
    'Conditions:',
  ];
  const conds = (st.conditions as Condition[] | undefined) ?? [];
  if (conds.length === 0) lines.push('  <none: not validated yet>');
  for (const c of conds) {
    lines.push(`  ${c.type} (${c.category ?? 'Advisory'}${c.reason ? `, ${c.reason}` : ''}): ${c.message ?? ''}`.trimEnd());
    for (const i of c.items ?? []) lines.push(`    - ${i}`);
  }
  lines.push('VMs:');
  for (const v of ((spec.vms as Obj[] | undefined) ?? []).map(o))
    lines.push(`  - ${[v.name ? `name:${String(v.name)}` : '', v.id ? `id:${String(v.id)}` : ''].filter(Boolean).join(' ')}`);
  const vms = ((migration ? o(migration.status).vms : o(st.migration).vms) as VmStatus[] | undefined) ?? [];
  if (!migration && vms.length === 0) {
    lines.push('Migration:         <none>');
    return `${lines.join('\n')}\n`;
  }
  const mst = o(migration?.status);
  const res = migration ? outcome(migration) : undefined;
  const waiting = ((mst.conditions as Condition[] | undefined) ?? []).some((c) => c.type === 'PlanNotReady' && c.status === 'True');
  // A Migration waiting for its plan is not finished: the controller starts it once the plan is Ready.
  const state = waiting ? 'waiting: PlanNotReady' : !res ? 'unknown' : res.done ? (res.failed ? 'Failed' : 'Succeeded') : mst.started ? 'Running' : 'Pending';
  lines.push(`Migration:         ${migration?.metadata?.name ?? '<from the plan status>'} (${state})`);
  if (mst.started) lines.push(`  Started:         ${String(mst.started)}`);
  if (mst.completed) lines.push(`  Completed:       ${String(mst.completed)}`);
  for (const v of vms) {
    lines.push(`  VM ${vmLabel(v)} (id ${v.id}): ${v.phase}`);
    for (const s of v.pipeline ?? []) {
      const p = s.progress;
      const amount = p ? ` ${p.completed}/${p.total}${s.annotations?.unit ? ` ${s.annotations.unit}` : ''}` : '';
      lines.push(`    ${s.name.padEnd(24)}${s.phase.padEnd(10)}${amount}`.trimEnd());
      for (const t of s.tasks ?? []) lines.push(taskLine(t, '      '));
      if (s.error) lines.push(`      error: ${s.error.reasons.join('; ')}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** Shows progressLines as they change: on a TTY the block is redrawn in place; otherwise each changed line is printed once. */
export class PlanProgress {
  private readonly last = new Map<string, string>();
  private drawn = 0;
  private readonly tty: boolean;

  constructor(private readonly stream: Pick<NodeJS.WriteStream, 'write' | 'isTTY'> = process.stderr) {
    this.tty = !!stream.isTTY;
  }

  update(vms: VmStatus[]): void {
    const lines = progressLines(vms);
    if (this.tty) {
      const text = lines.map((l) => l.line);
      if (text.join('\n') === [...this.last.values()].join('\n')) return;
      this.last.clear();
      for (const l of lines) this.last.set(l.key, l.line);
      // Up over the block drawn last time, then each line cleared and rewritten.
      this.stream.write(`${this.drawn ? `\x1b[${this.drawn}A` : ''}${text.map((t) => `\r${t}\x1b[K\n`).join('')}`);
      this.drawn = text.length;
      return;
    }
    for (const l of lines) {
      if (this.last.get(l.key) === l.line) continue;
      this.last.set(l.key, l.line);
      this.stream.write(`${l.line}\n`);
    }
  }
}

const planOf = (m: KubeObject): string => String(o(o(m.spec).plan).name ?? '');

/** The plan's Migrations, newest first. */
async function migrationsOf(client: Client, ns: string, plan: string): Promise<KubeObject[]> {
  const items = (await client.list(MIGRATIONS, { namespace: ns })).items.filter((m) => planOf(m) === plan);
  return items.sort((a, b) => String(b.metadata?.creationTimestamp ?? '').localeCompare(String(a.metadata?.creationTimestamp ?? '')));
}

/**
 * The plan's newest Migration not finished (no `status.completed`); an error if none. One waiting
 * on its plan (PlanNotReady) counts: the controller starts it once the plan is Ready.
 */
async function runningMigration(client: Client, ns: string, plan: string): Promise<KubeObject> {
  const m = (await migrationsOf(client, ns, plan)).find((x) => !o(x.status).completed);
  if (!m) throw new Error(`plan ${ns}/${plan} has no running migration`);
  return m;
}

function isoTime(flag: string, v: string): string {
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new UsageError(`${flag} must be a date-time (RFC 3339, e.g. 2026-12-06T21:00:00Z), not "${v}"`);
  return new Date(t).toISOString().replace(/\.000Z$/, 'Z');
}

/** Waits until the controller has validated the plan's current generation; then it must be Ready. */
async function readyPlan(client: Client, ns: string, name: string, timeoutMs: number): Promise<KubeObject> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = await client.get(PLANS, name, { namespace: ns });
    const st = o(p.status);
    const conds = (st.conditions as Condition[] | undefined) ?? [];
    if (st.observedGeneration === p.metadata?.generation && conds.length) {
      if (conds.some((c) => c.type === 'Ready' && c.status === 'True')) return p;
      const blocking = conds.filter((c) => c.category === 'Critical' || c.category === 'Error');
      throw new Error(
        [
          `plan ${ns}/${name} is not Ready:`,
          ...blocking.map((c) => `  ${c.type}: ${c.message ?? c.reason ?? ''}${c.items?.length ? ` (${c.items.join(', ')})` : ''}`),
        ].join('\n'),
      );
    }
    if (Date.now() > deadline) throw new Error(`plan ${ns}/${name} was not validated within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

export function registerPlan(program: Command): void {
  const plan = program.command('plan').description('migration toolkit plans (forklift.konveyor.io): create, start, cutover, cancel, describe');

  plan
    .command('create')
    .description('write a Plan migrating VMs of a provider into this cluster')
    .argument('<name>', 'Plan name')
    .requiredOption('--provider <provider>', 'source Provider name (in the namespace)')
    .option('--target-namespace <ns>', 'namespace the VMs are created in (default: the namespace)')
    .option('--network-map <map>', 'NetworkMap name')
    .option('--storage-map <map>', 'StorageMap name')
    .option('--vm <vm>', 'a VM of the inventory: its name or id (id:X / name:X to be explicit); repeatable', collect, [])
    .option('--type <type>', 'cold or warm (warm: running VMs of the host openshift provider, or vSphere VMs with CBT)')
    .option('--target-power-state <state>', 'on, off or auto')
    .option('--skip-guest-conversion', 'no virt-v2v conversion of the guests (ImageConversion)')
    .option('--dry-run', 'print the Plan, write nothing')
    .option('-o, --output <format>', 'yaml: print the Plan written')
    .action(
      async (
        name: string,
        f: {
          provider: string;
          targetNamespace?: string;
          networkMap?: string;
          storageMap?: string;
          vm: string[];
          type?: string;
          targetPowerState?: string;
          skipGuestConversion?: boolean;
          dryRun?: boolean;
          output?: string;
        },
        cmd: Command,
      ) => {
        if (f.output && f.output !== 'yaml') throw new UsageError(`--output must be yaml, not "${f.output}"`);
        const ctx = contextOf(cmd);
        const ns = ctx.namespace();
        const obj = buildPlan(name, ns, { ...f, vms: f.vm });
        if (f.dryRun) return out(toYaml(obj));
        const made = await ctx.client().create(PLANS, obj, { namespace: ns });
        out(f.output === 'yaml' ? toYaml(made) : `plan.forklift.konveyor.io/${name} created\n`);
      },
    );

  plan
    .command('start')
    .description("run a plan: create a Migration and follow each VM's pipeline and disk transfers")
    .argument('<name>', 'Plan name')
    .option('--cutover <time>', 'cutover time (RFC 3339) for a warm migration')
    .option('--no-wait', 'return once the Migration is created')
    .option('--timeout <seconds>', 'how long to wait', '3600')
    .action(async (name: string, f: { cutover?: string; wait: boolean; timeout: string }, cmd: Command) => {
      const ctx = contextOf(cmd);
      const ns = ctx.namespace();
      const client = ctx.client();
      const cutover = f.cutover ? isoTime('--cutover', f.cutover) : undefined;
      await readyPlan(client, ns, name, 60_000);
      const mname = `${name.slice(0, 50)}-${Math.random().toString(36).slice(2, 7).padEnd(5, '0')}`;
      await client.create(
        MIGRATIONS,
        {
          apiVersion: 'forklift.konveyor.io/v1beta1',
          kind: 'Migration',
          metadata: { name: mname, namespace: ns, labels: { 'forklift.konveyor.io/plan': name } },
          spec: { plan: { name, namespace: ns }, ...(cutover ? { cutover } : {}) },
        },
        { namespace: ns },
      );
      out(`migration.forklift.konveyor.io/${mname} created\n`);
      if (!f.wait) return;
      const t0 = Date.now();
      const deadline = t0 + Number(f.timeout) * 1000;
      const progress = new PlanProgress();
      for (;;) {
        const m = await client.get(MIGRATIONS, mname, { namespace: ns });
        progress.update((o(m.status).vms as VmStatus[] | undefined) ?? []);
        const res = outcome(m);
        if (res.done) {
          if (res.failed) throw new Error([`migration ${mname} failed:`, ...res.errors.map((e) => `  ${e}`)].join('\n'));
          const n = ((o(m.status).vms as unknown[] | undefined) ?? []).length;
          out(`migration ${mname} succeeded: ${n} VM${n === 1 ? '' : 's'} in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
          return;
        }
        if (Date.now() > deadline) throw new Error(`migration ${mname} did not finish within ${f.timeout} s; it goes on`);
        await new Promise((r) => setTimeout(r, 500));
      }
    });

  plan
    .command('cutover')
    .description("set the cutover time of a plan's running (warm) migration")
    .argument('<name>', 'Plan name')
    .option('--time <time>', 'cutover time (RFC 3339; default: now)')
    .action(async (name: string, f: { time?: string }, cmd: Command) => {
      const ctx = contextOf(cmd);
      const ns = ctx.namespace();
      const client = ctx.client();
      const cutover = f.time ? isoTime('--time', f.time) : new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
      const m = await runningMigration(client, ns, name);
      await client.patch(MIGRATIONS, m.metadata!.name!, { spec: { cutover } }, { namespace: ns });
      out(`migration.forklift.konveyor.io/${m.metadata!.name} cutover set to ${cutover}\n`);
    });

  plan
    .command('cancel')
    .description("cancel VMs of a plan's running migration (all of them without --vm)")
    .argument('<name>', 'Plan name')
    .option('--vm <vm>', 'a VM to cancel: name or id (id:X / name:X); repeatable', collect, [])
    .action(async (name: string, f: { vm: string[] }, cmd: Command) => {
      const ctx = contextOf(cmd);
      const ns = ctx.namespace();
      const client = ctx.client();
      const m = await runningMigration(client, ns, name);
      const all = (
        ((o(m.status).vms as VmStatus[] | undefined) ?? []).length
          ? ((o(m.status).vms as VmStatus[]) ?? []).map((v) => ({ id: v.id, name: v.name }))
          : ((o((await client.get(PLANS, name, { namespace: ns })).spec).vms as Obj[] | undefined) ?? []).map(o)
      ) as Obj[];
      const cancel = mergeCancel((o(m.spec).cancel as Obj[] | undefined) ?? [], f.vm.length ? f.vm.map(vmRef) : all);
      // resourceVersion in the merge patch: a concurrent change of the list is a 409, not lost.
      await client.patch(MIGRATIONS, m.metadata!.name!, { metadata: { resourceVersion: m.metadata!.resourceVersion }, spec: { cancel } }, { namespace: ns });
      out(`migration.forklift.konveyor.io/${m.metadata!.name}: cancel ${cancel.map((c) => String(c.name ?? c.id)).join(', ')}\n`);
    });

  plan
    .command('describe')
    .description("a plan's concerns, its VMs and its latest migration's pipeline")
    .argument('<name>', 'Plan name')
    .action(async (name: string, _f: unknown, cmd: Command) => {
      const ctx = contextOf(cmd);
      const ns = ctx.namespace();
      const client = ctx.client();
      const p = await client.get(PLANS, name, { namespace: ns });
      out(describePlan(p, (await migrationsOf(client, ns, name))[0]));
    });
}

/** Forklift's `spec.cancel`: the list so far plus the new refs, none twice (same id, or same name without ids). */
export function mergeCancel(existing: Obj[], add: Obj[]): Obj[] {
  const result = [...existing];
  for (const r of add) {
    const dup = result.some((e) => (r.id && e.id ? e.id === r.id : !!r.name && e.name === r.name));
    if (!dup) result.push(r);
  }
  return result;
}
