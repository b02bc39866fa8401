/**
 * Node network configuration in the agent (docs/network.md, "Node network configuration"), as
 * kubernetes-nmstate's handler does it but with `ip` commands: for each
 * NodeNetworkConfigurationPolicy that selects this node, apply its desired state in the node's
 * namespace, probe connectivity (the API server, and every other node's fabric address answering
 * ping), roll back to the snapshot taken before on failure, and report it in the enactment
 * `<node>.<policy>`; every agent also aggregates the policies' status from the enactments, and
 * writes its node's NodeNetworkState (after each apply and every minute).
 */
import { nmstate, refs, validateObject } from '@vessel/api';
import { isStatusError, type Client } from '@vessel/client';
import { Controller, setCondition, updateStatus, type Informer, type KubeObject, type Log } from '@vessel/runtime';
import { FABRIC_IP_ANNOTATION } from './cluster.ts';
import { NetworkError } from './errors.ts';
import { bridgeCmd, inNs, ip } from './exec.ts';
import {
  enactmentConditions,
  parseInterfaces,
  phaseOf,
  PlanError,
  planApply,
  policyConditions,
  rollbackState,
  touchedNames,
  type CurrentInterface,
  type EnactmentPhase,
  type Step,
  type VlanMode,
} from './nmstate-plan.ts';

/** kubernetes-nmstate's default: how long the probes may take after an apply before it is rolled back. */
export const DEFAULT_PROBE_TIMEOUT_MS = 120_000;
const DEFAULT_REFRESH_MS = 60_000;
const STATE_KEY = 'state';
const FINISHED = new Set<EnactmentPhase | undefined>(['Available', 'Failing', 'Aborted']);

export interface NetworkConfiguratorOptions {
  nodeName: string;
  /** The node's namespace (the dev cluster's); undefined: the agent's own, the host's. */
  netns?: string;
  /** How long connectivity may stay broken after an apply before it is rolled back (default 120 s, as nmstate). */
  probeTimeoutMs?: number;
  /** How often the NodeNetworkState is read again (default 60 s). */
  refreshMs?: number;
  log?: Log;
}

type Spec = nmstate.PolicySpec;
const specOf = (o: KubeObject): Spec => (o.spec ?? {}) as Spec;
const labelsOf = (o: KubeObject | undefined): Record<string, string> => (o?.metadata.labels ?? {}) as Record<string, string>;
const statusOf = (o: KubeObject | undefined) =>
  (o?.status ?? {}) as { conditions?: { type?: string; status?: string; reason?: string; message?: string }[]; policyGeneration?: number };

const isReady = (n: KubeObject) => statusOf(n).conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;

export class NetworkConfigurator extends Controller {
  private readonly policies: Informer;
  private readonly nodes: Informer;
  private readonly enactments: Informer;
  private readonly states: Informer;
  private readonly nodeLabels = new Map<string, string>();
  /** The generation of each policy this agent finished, so a status-only change (or a lagging cache) does not apply it again. */
  private readonly finished = new Map<string, number>();
  private vlanMode?: VlanMode;
  private pingArgv?: string[];
  private timer?: NodeJS.Timeout;

  constructor(
    client: Client,
    private readonly opts: NetworkConfiguratorOptions,
  ) {
    // One worker: a node applies one policy at a time, and never while it reads its state.
    super('nmstate', client, opts.log, 1);
    this.policies = this.inform(refs.NNCPS, (p) => [`policy/${p.metadata.name}`, `status/${p.metadata.name}`]);
    this.enactments = this.inform(refs.NNCES, (e) => {
      const policy = labelsOf(e)[nmstate.POLICY_LABEL];
      return policy ? [`status/${policy}`] : [];
    });
    this.states = this.inform(refs.NNSS, () => []);
    // A node's labels decide which policies select it: on a change, look at every policy again.
    this.nodes = this.inform(refs.NODES, (n) => {
      const labels = JSON.stringify(labelsOf(n));
      if (this.nodeLabels.get(n.metadata.name) === labels) return [];
      this.nodeLabels.set(n.metadata.name, labels);
      const names = this.policies.list().map((p) => p.metadata.name);
      return [...names.map((p) => `status/${p}`), ...(n.metadata.name === opts.nodeName ? names.map((p) => `policy/${p}`) : [])];
    });
    // A deleted Node no longer counts in any policy's N/M.
    this.nodes.on({
      delete: (n) => {
        this.nodeLabels.delete(n.metadata.name);
        for (const p of this.policies.list()) this.queue.add(`status/${p.metadata.name}`);
      },
    });
  }

  protected override async started(): Promise<void> {
    this.queue.add(STATE_KEY);
    for (const p of this.policies.list()) this.queue.add(`policy/${p.metadata.name}`);
    this.timer = setInterval(() => this.queue.add(STATE_KEY), this.opts.refreshMs ?? DEFAULT_REFRESH_MS);
    this.timer.unref();
  }

  protected override async stopped(): Promise<void> {
    clearInterval(this.timer);
  }

  protected async reconcile(key: string): Promise<void> {
    if (key === STATE_KEY) return this.writeState();
    const [kind, name] = [key.slice(0, key.indexOf('/')), key.slice(key.indexOf('/') + 1)];
    if (kind === 'policy') return this.enact(name);
    if (kind === 'status') return this.aggregate(name);
  }

  // ---- the node's state ------------------------------------------------------------------------

  /** The node's interfaces, read in its namespace. */
  async readState(): Promise<CurrentInterface[]> {
    const [links, addrs] = await Promise.all([ip(this.opts.netns, ['-j', '-d', 'link', 'show']), ip(this.opts.netns, ['-j', 'addr', 'show'])]);
    return parseInterfaces(links.stdout, addrs.stdout);
  }

  private async writeState(): Promise<void> {
    const interfaces = await this.readState();
    const name = this.opts.nodeName;
    const now = new Date().toISOString();
    if (!this.states.get(name)) {
      const node = this.nodes.get(name);
      try {
        await this.client.create(refs.NNSS, {
          apiVersion: 'nmstate.io/v1beta1',
          kind: 'NodeNetworkState',
          metadata: {
            name,
            ...(node?.metadata.uid ? { ownerReferences: [{ apiVersion: 'v1', kind: 'Node', name, uid: node.metadata.uid }] } : {}),
          },
        });
      } catch (e) {
        if (!isStatusError(e, 'AlreadyExists')) throw e;
      }
    }
    await updateStatus(this.client, refs.NNSS, undefined, name, (st) => {
      st.currentState = { interfaces };
      st.lastSuccessfulUpdateTime = now;
    });
  }

  // ---- applying a policy -----------------------------------------------------------------------

  private async enact(policyName: string): Promise<void> {
    const node = this.opts.nodeName;
    const policy = this.policies.get(policyName);
    const enName = nmstate.enactmentName(node, policyName);
    const existing = this.enactments.get(enName);
    const me = this.nodes.get(node);
    if (!me) return this.queue.addAfter(`policy/${policyName}`, 1000);
    // Deleting a policy, or no longer selecting this node, leaves the node as it is (as nmstate).
    if (!policy || policy.metadata.deletionTimestamp || !nmstate.selectsNode(specOf(policy), labelsOf(me))) {
      this.finished.delete(policyName);
      if (existing) await this.client.delete(refs.NNCES, enName).catch((e: unknown) => (isStatusError(e, 'NotFound') ? undefined : Promise.reject(e)));
      return;
    }
    const generation = policy.metadata.generation ?? 1;
    const st = statusOf(existing);
    if (this.finished.get(policyName) === generation) return;
    const desired = specOf(policy).desiredState ?? {};
    if (existing && st.policyGeneration === generation && FINISHED.has(phaseOf(st.conditions))) {
      this.finished.set(policyName, generation);
      // Applied before this agent started: checked once, since the node may have lost it (a
      // reboot: `ip` changes do not persist) and applied again only then. A failed one is not
      // retried until the policy changes (it would cut the node off again).
      if (phaseOf(st.conditions) !== 'Available' || !(await this.drifted(desired.interfaces ?? []))) return;
      this.log(`nmstate: ${policyName} on ${node}: the node lost the desired state; applying it again`);
    }
    if (!existing) {
      try {
        await this.client.create(refs.NNCES, {
          apiVersion: 'nmstate.io/v1beta1',
          kind: 'NodeNetworkConfigurationEnactment',
          metadata: {
            name: enName,
            labels: { [nmstate.NODE_LABEL]: node, [nmstate.POLICY_LABEL]: policyName },
            ownerReferences: [{ apiVersion: 'nmstate.io/v1', kind: 'NodeNetworkConfigurationPolicy', name: policyName, uid: policy.metadata.uid ?? '' }],
          },
        });
      } catch (e) {
        if (!isStatusError(e, 'AlreadyExists')) throw e;
      }
    }
    const report = (phase: EnactmentPhase, message: string) =>
      updateStatus(this.client, refs.NNCES, undefined, enName, (s) => {
        for (const c of enactmentConditions(phase, message)) setCondition(s, c);
        s.policyGeneration = generation;
        s.desiredState = desired;
      });
    await report('Progressing', 'Applying desired state');
    // Admission checked it; checked again because its names and addresses become `ip` arguments.
    const invalid = validateObject(refs.NNCPS, { ...policy, status: undefined }, 'create', undefined, {
      fieldValidation: 'Ignore',
      subresource: 'status',
    }).causes;
    const { phase, message } = invalid.length
      ? { phase: 'Failing' as const, message: `the policy is invalid: ${invalid.map((c) => `${c.field}: ${c.message}`).join('; ')}; nothing was changed` }
      : await this.apply(desired.interfaces ?? []);
    this.log(`nmstate: ${policyName} on ${node}: ${phase}: ${message}`);
    await report(phase, message);
    this.finished.set(policyName, generation);
    this.queue.add(STATE_KEY);
  }

  /** Applies, probes and (on failure) rolls back; the outcome as an enactment phase and message. */
  async apply(desired: readonly nmstate.DesiredInterface[]): Promise<{ phase: EnactmentPhase; message: string }> {
    const before = await this.readState();
    this.vlanMode ??= await this.detectVlanMode();
    let steps: Step[];
    try {
      steps = planApply(desired, before, this.vlanMode);
    } catch (e) {
      if (e instanceof PlanError) return { phase: 'Failing', message: `${e.message}; nothing was changed` };
      throw e;
    }
    const touched = touchedNames(desired);
    try {
      await this.run(steps);
    } catch (e) {
      await this.rollBack(touched, before);
      return { phase: 'Failing', message: `${e instanceof Error ? e.message : String(e)}; rolled back to the state before the policy` };
    }
    if (steps.length === 0) return { phase: 'Available', message: 'successfully reconciled (already in the desired state)' };
    const failed = await this.probe(this.opts.probeTimeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS);
    if (failed) {
      await this.rollBack(touched, before);
      return { phase: 'Failing', message: `connectivity probe failed (${failed}); rolled back to the state before the policy` };
    }
    return { phase: 'Available', message: `successfully reconciled (${steps.length} change(s))` };
  }

  /** Whether the node is no longer in `desired` (an unplannable state counts as drifted: applying reports why). */
  private async drifted(desired: readonly nmstate.DesiredInterface[]): Promise<boolean> {
    this.vlanMode ??= await this.detectVlanMode();
    try {
      return planApply(desired, await this.readState(), this.vlanMode).length > 0;
    } catch (e) {
      if (e instanceof PlanError) return true;
      throw e;
    }
  }

  private async run(steps: readonly Step[]): Promise<void> {
    for (const s of steps) await (s.tool === 'ip' ? ip(this.opts.netns, s.args) : bridgeCmd(this.opts.netns, s.args));
  }

  /** Best effort: every step is tried, so one failure does not leave the rest undone. */
  private async rollBack(touched: readonly string[], before: readonly CurrentInterface[]): Promise<void> {
    let steps: Step[];
    try {
      steps = planApply(rollbackState(touched, before), await this.readState(), this.vlanMode ?? 'kernel');
    } catch (e) {
      this.log(`nmstate: rollback on ${this.opts.nodeName} cannot be planned: ${e instanceof Error ? e.message : e}`);
      return;
    }
    for (const s of steps) {
      await this.run([s]).catch((e: unknown) => this.log(`nmstate: rollback on ${this.opts.nodeName}: ${e instanceof Error ? e.message : e}`));
    }
  }

  /**
   * nmstate probes the default gateway, the API server and DNS after an apply. Here: the API
   * server answers the agent, and every other node's fabric address answers a ping from this
   * node's namespace. Retried until `timeoutMs`; resolves to what failed last, or undefined.
   */
  private async probe(timeoutMs: number): Promise<string | undefined> {
    const deadline = Date.now() + timeoutMs;
    let failed: string | undefined;
    do {
      failed = undefined;
      try {
        await this.client.get(refs.NODES, this.opts.nodeName);
      } catch (e) {
        failed = `API server: ${e instanceof Error ? e.message : e}`;
      }
      const peers = this.nodes
        .list()
        // A node that is down would fail every apply: only Ready ones are probed.
        .filter((n) => n.metadata.name !== this.opts.nodeName && isReady(n))
        .map((n) => (n.metadata.annotations as Record<string, string> | undefined)?.[FABRIC_IP_ANNOTATION])
        .filter((a): a is string => !!a);
      for (const peer of failed ? [] : peers) if (!(await this.ping(peer))) failed = `node fabric address ${peer} does not answer ping`;
      if (!failed) return undefined;
      await new Promise((r) => setTimeout(r, 500));
    } while (Date.now() < deadline);
    return `${failed} for ${Math.round(timeoutMs / 1000)}s`;
  }

  private async ping(address: string): Promise<boolean> {
    const args = ['-c', '1', '-W', '1', address];
    try {
      if (!this.pingArgv) {
        // Debian's ping may be missing (nsenter then exits 127); busybox's does the same.
        const r = await inNs(this.opts.netns, ['ping', ...args], { okCodes: [1, 2, 127] });
        if (r.code !== 127) {
          this.pingArgv = ['ping'];
          return r.code === 0;
        }
        this.pingArgv = ['busybox', 'ping'];
      }
      const r = await inNs(this.opts.netns, [...this.pingArgv, ...args], { okCodes: [1, 2] });
      return r.code === 0;
    } catch (e) {
      if (e instanceof NetworkError && e.code === 'ToolMissing' && !this.pingArgv) this.pingArgv = ['busybox', 'ping'];
      this.log(`nmstate: ping ${address}: ${e instanceof Error ? e.message : e}`);
      return false;
    }
  }

  /** Whether this kernel makes 802.1Q devices; without 8021q a vlan is the VXLAN stand-in (nmstate-plan.ts). */
  private async detectVlanMode(): Promise<VlanMode> {
    const r = await ip(this.opts.netns, ['link', 'add', 'link', 'lo', 'name', 'vslvlanprobe', 'type', 'vlan', 'id', '1'], { okCodes: [1, 2, 255] });
    if (r.code === 0) await ip(this.opts.netns, ['link', 'del', 'vslvlanprobe'], { okCodes: [1, 2, 255] });
    const mode: VlanMode = /unknown device type/i.test(r.stderr) ? 'vxlan' : 'kernel';
    if (mode === 'vxlan') this.log(`nmstate: the kernel has no 802.1Q devices; vlans on ${this.opts.nodeName} are VXLAN stand-ins (docs/network.md)`);
    return mode;
  }

  // ---- the policy's status ---------------------------------------------------------------------

  private async aggregate(policyName: string): Promise<void> {
    const policy = this.policies.get(policyName);
    if (!policy) return;
    const generation = policy.metadata.generation ?? 1;
    const phases = this.nodes
      .list()
      .filter((n) => nmstate.selectsNode(specOf(policy), labelsOf(n)))
      .map((n) => {
        const st = statusOf(this.enactments.get(nmstate.enactmentName(n.metadata.name, policyName)));
        return st.policyGeneration === generation ? phaseOf(st.conditions) : undefined;
      });
    const conds = policyConditions(phases);
    const same = (list: ReturnType<typeof statusOf>['conditions']) =>
      conds.every((c) => list?.some((o) => o.type === c.type && o.status === c.status && o.reason === c.reason && o.message === c.message));
    if (same(statusOf(policy).conditions)) return;
    await updateStatus(this.client, refs.NNCPS, undefined, policyName, (s) => {
      if (same((s as ReturnType<typeof statusOf>).conditions)) return false;
      for (const c of conds) setCondition(s, c);
    });
  }
}
