/**
 * The migration toolkit's controller (docs/forklift.md): `ova` Providers get their inventory
 * read from a directory the administrator allowed (ControllerOptions.ovaRoots), published in the
 * ConfigMap `<provider>-inventory` (@vessel/api forklift; owned by the Provider) and counted in its status; NetworkMaps,
 * StorageMaps and Plans get Forklift's conditions from that inventory and the target cluster.
 * `vsphere` Providers are read over the vSphere Web Services API (./vsphere/) with their Secret,
 * into the same inventory; `openshift` Providers from a KubeVirt cluster's API (./openshift/: this
 * cluster, or a URL with a token), their VMs moved through VirtualMachineExports. A Migration runs a Ready plan cold (./migration.ts), its per-VM
 * `spec.cancel` followed while it runs; Hooks get their conditions (./hooks.ts).
 */
import type { Client } from '@vessel/client';
import { isStatusError } from '@vessel/client';
import { Controller, cacheKey, type Informer, type Log, updateStatus } from '@vessel/runtime';
import { forklift, refs, tryParseQuantity, type KubeObject } from '@vessel/api';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { allowedDir, openPackage, ovaPath, OvaError, readInventory, type Inventory } from './ova.ts';
import { cancelNames, claimName, MigrationRun, targetVm, type DiskOpener } from './migration.ts';
import { clusterWarmOps } from './warm-ops.ts';
import { vsphereWarmOps } from './vsphere/warm.ts';
import { hookConcerns, runHook, type HookOptions } from './hooks.ts';
import { conversionWanted, nodeHasVirtV2v } from './conversion.ts';
import { VsphereError } from './vsphere/soap.ts';
import { readVsphereInventory, type VsphereVm } from './vsphere/inventory.ts';
import { connect, openDisk, parseSecret, powerOff, type VsphereSecret } from './vsphere/provider.ts';
import { OpenshiftError, parseOpenshiftSecret, type OpenshiftSecret, type OpenshiftVm } from './openshift/inventory.ts';
import {
  exportName,
  fingerprint as tlsFingerprint,
  openshiftTargetVm,
  readOpenshiftInventory,
  remoteClient,
  sourceError,
  startSourceVm,
  type SourceCluster,
} from './openshift/provider.ts';
import {
  mapSource,
  networkMapConcerns,
  planConcerns,
  storageMapConcerns,
  toConditions,
  type Concern,
  type PlanContext,
  type PlanVmResult,
} from './validation.ts';

const { inventoryConfigMapName, INVENTORY_KEY, PROVIDER_LABEL } = forklift;
const {
  FORKLIFT_PROVIDERS,
  FORKLIFT_NETWORKMAPS,
  FORKLIFT_STORAGEMAPS,
  FORKLIFT_PLANS,
  FORKLIFT_MIGRATIONS,
  FORKLIFT_HOOKS,
  NETWORK_ATTACHMENT_DEFINITIONS,
  STORAGE_CLASSES,
  VMS,
  CONFIGMAPS,
  SECRETS,
  NODES,
} = refs;

/** How often an `ova` directory is scanned again. */
const RESCAN_MS = 60_000;

type Obj = Record<string, unknown>;
const o = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});

export interface ForkliftOptions {
  /** Directories `ova` providers may name (their `spec.url`), e.g. NFS mounts. None: every `ova` provider is refused. */
  ovaRoots?: readonly string[];
  /** VMs of one migration run at once (Forklift's controller_max_vm_inflight); default DEFAULT_MAX_IN_FLIGHT. */
  maxInFlight?: number;
  /** Where registered hook scripts live, and whether URL hooks may reach loopback (./hooks.ts). */
  hooks?: HookOptions;
  /** Warm plans: time between precopy rounds (Forklift's controller_precopy_interval); default 60 min. */
  precopyIntervalMs?: number;
}

export class ForkliftController extends Controller {
  private readonly providers: Informer;
  private readonly networkMaps: Informer;
  private readonly storageMaps: Informer;
  private readonly plans: Informer;
  private readonly migrations: Informer;
  /** Migrations running in this process, by uid. */
  private readonly running = new Map<string, { run: MigrationRun; done: Promise<void> }>();
  private readonly nads: Informer;
  private readonly classes: Informer;
  private readonly vms: Informer;
  private readonly nodes: Informer;
  /** Ready providers' inventories by namespace/name, with the generation they were read for. */
  private readonly inventories = new Map<string, { generation: number; inventory: Inventory; at: number }>();
  private readonly ovaRoots: readonly string[];
  private readonly hooks: Informer;
  private readonly opts: ForkliftOptions;

  constructor(client: Client, log?: Log, opts: ForkliftOptions = {}) {
    super('forklift', client, log, 1);
    this.ovaRoots = opts.ovaRoots ?? [];
    this.opts = opts;
    const all = (): string[] => [...this.dependents()];
    this.providers = this.inform(FORKLIFT_PROVIDERS, (p) => [`provider|${cacheKey(p)}`]);
    // A plan reads its maps' Ready condition: a map's change revalidates the plans too.
    const plans = (): string[] => this.plans.list().map((p) => `plan|${cacheKey(p)}`);
    this.networkMaps = this.inform(FORKLIFT_NETWORKMAPS, (m) => [`networkmap|${cacheKey(m)}`, ...plans()]);
    this.storageMaps = this.inform(FORKLIFT_STORAGEMAPS, (m) => [`storagemap|${cacheKey(m)}`, ...plans()]);
    this.plans = this.inform(FORKLIFT_PLANS, (p) => [`plan|${cacheKey(p)}`]);
    this.migrations = this.inform(FORKLIFT_MIGRATIONS, (m) => [`migration|${cacheKey(m)}`]);
    this.nads = this.inform(NETWORK_ATTACHMENT_DEFINITIONS, all);
    this.classes = this.inform(STORAGE_CLASSES, all);
    this.vms = this.inform(VMS, all);
    this.hooks = this.inform(FORKLIFT_HOOKS, (h) => [`hook|${cacheKey(h)}`, ...plans()]);
    // Plans say when no node can run virt-v2v (ImageConversion), so they follow the Nodes' labels.
    // Heartbeats change Nodes every few seconds: only a change of that answer revalidates.
    let v2v: boolean | undefined;
    this.nodes = this.inform(NODES, () => {
      const now = this.nodes.list().some(nodeHasVirtV2v);
      if (now === v2v) return [];
      v2v = now;
      return plans();
    });
  }

  /** Lost the lease or shutting down: running migrations stop where they are; the next leader resumes them. */
  protected override async stopped(): Promise<void> {
    const runs = [...this.running.values()];
    for (const r of runs) r.run.stop();
    await Promise.all(runs.map((r) => r.done));
  }

  /** Every map and plan: they depend on providers, NADs, classes and VMs (few objects, so no index). */
  private *dependents(): Iterable<string> {
    for (const m of this.networkMaps.list()) yield `networkmap|${cacheKey(m)}`;
    for (const m of this.storageMaps.list()) yield `storagemap|${cacheKey(m)}`;
    for (const p of this.plans.list()) yield `plan|${cacheKey(p)}`;
  }

  protected async reconcile(key: string): Promise<void> {
    const [kind, rest] = [key.slice(0, key.indexOf('|')), key.slice(key.indexOf('|') + 1)];
    if (kind === 'provider') return this.reconcileProvider(rest);
    if (kind === 'networkmap' || kind === 'storagemap') return this.reconcileMap(kind, rest);
    if (kind === 'plan') return this.reconcilePlan(rest);
    if (kind === 'migration') return this.reconcileMigration(rest);
    if (kind === 'hook') return this.reconcileHook(rest);
  }

  /** A Hook's conditions: Ready when the script or URL it names can run; images are never run. */
  private async reconcileHook(key: string): Promise<void> {
    const h = this.hooks.get(key);
    if (!h || h.metadata.deletionTimestamp) return;
    const concerns = await hookConcerns(h, this.opts.hooks ?? {});
    await updateStatus(this.client, FORKLIFT_HOOKS, h.metadata.namespace, h.metadata.name, (s) => {
      s.observedGeneration = h.metadata.generation ?? 0;
      s.conditions = toConditions(concerns, s.conditions);
    });
    // A script the administrator registers later makes the hook Ready: look again.
    if (!concerns.some((c) => c.type === 'Ready')) this.queue.addAfter(`hook|${key}`, 30_000);
  }

  private async reconcileProvider(key: string): Promise<void> {
    const p = this.providers.get(key);
    if (!p || p.metadata.deletionTimestamp) {
      this.inventories.delete(key);
      return;
    }
    const spec = o(p.spec);
    const generation = p.metadata.generation ?? 0;
    const concerns: Concern[] = [];
    let phase: string;
    let inventory: Inventory | undefined;
    let fingerprint: string | undefined;
    if (spec.type === 'vsphere') {
      ({ phase, inventory, fingerprint } = await this.vsphereProvider(p, key, generation, concerns));
    } else if (spec.type === 'openshift') {
      ({ phase, inventory, fingerprint } = await this.openshiftProvider(p, key, generation, concerns));
    } else if (spec.type !== 'ova') {
      concerns.push({
        type: 'ProviderTypeNotSupported',
        status: 'True',
        category: 'Critical',
        reason: 'NotSupported',
        message: 'The `type` must be: [ova, vsphere, openshift] (Vessel reads only these providers so far).',
      });
      phase = 'ValidationFailed';
    } else if (typeof spec.url !== 'string' || !spec.url) {
      concerns.push({
        type: 'UrlNotValid',
        status: 'True',
        category: 'Critical',
        reason: 'NotSet',
        message: 'The `url` is required: the directory holding the OVAs.',
      });
      phase = 'ValidationFailed';
    } else {
      concerns.push({ type: 'Validated', status: 'True', category: 'Advisory', reason: 'Completed', message: 'Validation has been completed.' });
      const cached = this.inventories.get(key);
      try {
        inventory =
          cached && cached.generation === generation && Date.now() - cached.at < RESCAN_MS
            ? cached.inventory
            : await readInventory(ovaPath(spec.url), this.ovaRoots);
        this.inventories.set(key, { generation, inventory, at: cached?.inventory === inventory ? cached.at : Date.now() });
        concerns.push({ type: 'ConnectionTestSucceeded', status: 'True', category: 'Required', reason: 'Tested', message: 'Connection test, succeeded.' });
        concerns.push({ type: 'InventoryCreated', status: 'True', category: 'Required', reason: 'Completed', message: 'The inventory has been loaded.' });
        if (inventory.errors.length)
          concerns.push({
            type: 'PackagesRefused',
            status: 'True',
            category: 'Warn',
            reason: 'NotValid',
            message: 'Some OVA packages were refused; they are not in the inventory.',
            items: inventory.errors.map((e) => `${e.source}: ${e.code}: ${e.message}`),
          });
        concerns.push({ type: 'Ready', status: 'True', category: 'Required', message: 'The provider is ready.' });
        phase = 'Ready';
      } catch (e) {
        if (!(e instanceof OvaError)) throw e;
        this.inventories.delete(key);
        const notAllowed = e.code === 'PathNotAllowed';
        concerns.push({
          type: notAllowed ? 'UrlNotValid' : 'ConnectionTestFailed',
          status: 'True',
          category: 'Critical',
          reason: notAllowed ? 'NotValid' : 'Malformed',
          message: e.message,
        });
        phase = notAllowed ? 'ValidationFailed' : 'ConnectionFailed';
      }
    }
    if (inventory) await this.publish(p.metadata.namespace ?? '', p.metadata.name, p.metadata.uid ?? '', inventory);
    await updateStatus(this.client, FORKLIFT_PROVIDERS, p.metadata.namespace, p.metadata.name, (s) => {
      s.phase = phase;
      s.observedGeneration = generation;
      s.conditions = toConditions(concerns, s.conditions);
      if (fingerprint) s.fingerprint = fingerprint;
      else if (spec.type === 'vsphere' || spec.type === 'openshift') delete s.fingerprint;
      if (inventory)
        s.inventory = {
          vms: inventory.vms.length,
          networks: inventory.networks.length,
          datastores: inventory.datastores.length,
          hosts: inventory.hosts.length,
        };
      else delete s.inventory;
    });
    for (const k of this.dependents()) this.queue.add(k);
    if (inventory) this.queue.addAfter(`provider|${key}`, RESCAN_MS);
  }

  /** The provider's Secret, parsed (VsphereError SecretNotValid when missing or incomplete). */
  private async vsphereSecret(p: KubeObject): Promise<VsphereSecret> {
    const ref = o(o(p.spec).secret);
    const name = typeof ref.name === 'string' ? ref.name : '';
    const ns = typeof ref.namespace === 'string' && ref.namespace ? ref.namespace : (p.metadata?.namespace ?? '');
    if (!name) throw new VsphereError('SecretNotValid', 'the provider names no secret');
    try {
      const secret = (await this.client.get(SECRETS, name, { namespace: ns })) as { data?: Record<string, string> };
      return parseSecret(secret.data);
    } catch (e) {
      if (isStatusError(e, 'NotFound')) throw new VsphereError('SecretNotValid', `secret ${ns}/${name} not found`);
      throw e;
    }
  }

  /** A `vsphere` provider: connect with its Secret, read the inventory (cached as the ova one), say why not. */
  private async vsphereProvider(
    p: KubeObject,
    key: string,
    generation: number,
    concerns: Concern[],
  ): Promise<{ phase: string; inventory?: Inventory; fingerprint?: string }> {
    const url = o(p.spec).url;
    if (typeof url !== 'string' || !url) {
      concerns.push({ type: 'UrlNotValid', status: 'True', category: 'Critical', reason: 'NotSet', message: 'The `url` is required: https://vcenter/sdk.' });
      return { phase: 'ValidationFailed' };
    }
    let secret: VsphereSecret;
    try {
      secret = await this.vsphereSecret(p);
    } catch (e) {
      if (!(e instanceof VsphereError)) throw e;
      concerns.push({ type: 'SecretNotValid', status: 'True', category: 'Critical', reason: 'NotValid', message: e.message });
      return { phase: 'ValidationFailed' };
    }
    concerns.push({ type: 'Validated', status: 'True', category: 'Advisory', reason: 'Completed', message: 'Validation has been completed.' });
    const cached = this.inventories.get(key);
    let client;
    try {
      client = await connect(url, secret);
      const fingerprint = client.fingerprint;
      const inventory =
        cached && cached.generation === generation && Date.now() - cached.at < RESCAN_MS ? cached.inventory : await readVsphereInventory(client);
      this.inventories.set(key, { generation, inventory, at: cached?.inventory === inventory ? cached.at : Date.now() });
      concerns.push({ type: 'ConnectionTestSucceeded', status: 'True', category: 'Required', reason: 'Tested', message: 'Connection test, succeeded.' });
      concerns.push({ type: 'InventoryCreated', status: 'True', category: 'Required', reason: 'Completed', message: 'The inventory has been loaded.' });
      concerns.push({ type: 'Ready', status: 'True', category: 'Required', message: 'The provider is ready.' });
      return { phase: 'Ready', inventory, fingerprint };
    } catch (e) {
      if (!(e instanceof VsphereError)) throw e;
      this.inventories.delete(key);
      concerns.push({ type: 'ConnectionTestFailed', status: 'True', category: 'Critical', reason: e.code, message: e.message });
      return { phase: 'ConnectionFailed' };
    } finally {
      if (client) {
        await client.logout();
        client.close();
      }
    }
  }

  /**
   * An `openshift` provider's source cluster: this one for an empty `url` (Forklift's host
   * provider; as a source it reads only its own namespace: a tenant's provider must not export
   * other tenants' VMs with the controller's rights), else the URL with the Secret's token.
   */
  private async openshiftSource(p: KubeObject): Promise<{ src: SourceCluster; url?: string; secret?: OpenshiftSecret }> {
    const url = o(p.spec).url;
    if (typeof url !== 'string' || !url) return { src: { client: this.client, namespace: p.metadata?.namespace ?? '', owned: false } };
    const ref = o(o(p.spec).secret);
    const name = typeof ref.name === 'string' ? ref.name : '';
    const ns = typeof ref.namespace === 'string' && ref.namespace ? ref.namespace : (p.metadata?.namespace ?? '');
    if (!name) throw new OpenshiftError('SecretNotValid', 'a provider with a `url` names a secret with a `token`');
    // Vessel's rule: the secret is in the provider's namespace (another tenant's token is not ours to use).
    if (ns !== p.metadata?.namespace) throw new OpenshiftError('SecretNotValid', "the secret must be in the provider's namespace");
    let secret: OpenshiftSecret;
    try {
      secret = parseOpenshiftSecret(((await this.client.get(SECRETS, name, { namespace: ns })) as { data?: Record<string, string> }).data);
    } catch (e) {
      if (isStatusError(e, 'NotFound')) throw new OpenshiftError('SecretNotValid', `secret ${ns}/${name} not found`);
      throw e;
    }
    return { src: { client: remoteClient(url, secret), owned: true }, url, secret };
  }

  /** An `openshift` provider: connect (token, TLS), read the inventory (cached as the others), say why not. */
  private async openshiftProvider(
    p: KubeObject,
    key: string,
    generation: number,
    concerns: Concern[],
  ): Promise<{ phase: string; inventory?: Inventory; fingerprint?: string }> {
    let source: Awaited<ReturnType<ForkliftController['openshiftSource']>>;
    try {
      source = await this.openshiftSource(p);
    } catch (e) {
      if (!(e instanceof OpenshiftError)) throw e;
      concerns.push({ type: e.code, status: 'True', category: 'Critical', reason: 'NotValid', message: e.message });
      return { phase: 'ValidationFailed' };
    }
    concerns.push({ type: 'Validated', status: 'True', category: 'Advisory', reason: 'Completed', message: 'Validation has been completed.' });
    const cached = this.inventories.get(key);
    try {
      const fingerprint = source.url && source.secret ? await tlsFingerprint(source.url, source.secret) : undefined;
      const inventory =
        cached && cached.generation === generation && Date.now() - cached.at < RESCAN_MS ? cached.inventory : await readOpenshiftInventory(source.src);
      this.inventories.set(key, { generation, inventory, at: cached?.inventory === inventory ? cached.at : Date.now() });
      concerns.push({ type: 'ConnectionTestSucceeded', status: 'True', category: 'Required', reason: 'Tested', message: 'Connection test, succeeded.' });
      concerns.push({ type: 'InventoryCreated', status: 'True', category: 'Required', reason: 'Completed', message: 'The inventory has been loaded.' });
      concerns.push({ type: 'Ready', status: 'True', category: 'Required', message: 'The provider is ready.' });
      return { phase: 'Ready', inventory, ...(fingerprint ? { fingerprint } : {}) };
    } catch (e) {
      const err = sourceError(e);
      this.inventories.delete(key);
      concerns.push({ type: 'ConnectionTestFailed', status: 'True', category: 'Critical', reason: err.code, message: err.message });
      return { phase: 'ConnectionFailed' };
    } finally {
      if (source.src.owned) source.src.client.close();
    }
  }

  /** Writes the inventory ConfigMap when it changed. */
  private async publish(ns: string, provider: string, uid: string, inventory: Inventory): Promise<void> {
    const name = inventoryConfigMapName(provider);
    const text = JSON.stringify(inventory);
    const body = {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: {
        name,
        namespace: ns,
        labels: { [PROVIDER_LABEL]: provider },
        ownerReferences: [{ apiVersion: 'forklift.konveyor.io/v1beta1', kind: 'Provider', name: provider, uid, controller: true }],
      },
      data: { [INVENTORY_KEY]: text },
    };
    try {
      const cur = (await this.client.get(CONFIGMAPS, name, { namespace: ns })) as { metadata?: { resourceVersion?: string }; data?: Record<string, string> };
      if (cur.data?.[INVENTORY_KEY] === text) return;
      await this.client.update(CONFIGMAPS, { ...body, metadata: { ...body.metadata, resourceVersion: cur.metadata?.resourceVersion } }, { namespace: ns });
    } catch (e) {
      if (!isStatusError(e, 'NotFound')) throw e;
      await this.client.create(CONFIGMAPS, body, { namespace: ns });
    }
  }

  /** The inventory of the source provider a map or plan names, when that provider is Ready. */
  private inventoryFor(obj: KubeObject): Inventory | undefined {
    const src = o(o(o(obj.spec).provider).source);
    const name = typeof src.name === 'string' ? src.name : '';
    const ns = typeof src.namespace === 'string' && src.namespace ? src.namespace : obj.metadata?.namespace;
    const p = this.providers.get(`${ns}/${name}`);
    return p && o(p.status).phase === 'Ready' ? this.inventories.get(`${ns}/${name}`)?.inventory : undefined;
  }

  private async reconcileMap(kind: 'networkmap' | 'storagemap', key: string): Promise<void> {
    const informer = kind === 'networkmap' ? this.networkMaps : this.storageMaps;
    const m = informer.get(key);
    if (!m || m.metadata.deletionTimestamp) return;
    const inv = this.inventoryFor(m);
    const concerns =
      kind === 'networkmap'
        ? networkMapConcerns(m as Obj, inv, (ns, name) => !!this.nads.get(`${ns}/${name}`))
        : storageMapConcerns(m as Obj, inv, (name) => !!this.classes.get(name));
    await updateStatus(this.client, kind === 'networkmap' ? FORKLIFT_NETWORKMAPS : FORKLIFT_STORAGEMAPS, m.metadata.namespace, m.metadata.name, (s) => {
      s.observedGeneration = m.metadata.generation ?? 0;
      s.conditions = toConditions(concerns, s.conditions);
    });
  }

  private async reconcilePlan(key: string): Promise<void> {
    const plan = this.plans.get(key);
    if (!plan || plan.metadata.deletionTimestamp) return;
    const { concerns } = planConcerns(plan as Obj, this.planContext(plan));
    await updateStatus(this.client, FORKLIFT_PLANS, plan.metadata.namespace, plan.metadata.name, (s) => {
      s.observedGeneration = plan.metadata.generation ?? 0;
      s.conditions = toConditions(concerns, s.conditions);
    });
    for (const m of this.migrations.list()) this.queue.add(`migration|${cacheKey(m)}`);
  }

  private mapsOf(plan: KubeObject): { networkMap: Obj | undefined; storageMap: Obj | undefined } {
    const spec = o(plan.spec);
    const mapRef = (r: unknown, inf: Informer): Obj | undefined => {
      const ref = o(r);
      const ns = typeof ref.namespace === 'string' && ref.namespace ? ref.namespace : plan.metadata?.namespace;
      return inf.get(`${ns}/${typeof ref.name === 'string' ? ref.name : ''}`) as Obj | undefined;
    };
    return { networkMap: mapRef(o(spec.map).network, this.networkMaps), storageMap: mapRef(o(spec.map).storage, this.storageMaps) };
  }

  private planContext(plan: KubeObject): PlanContext {
    const planName = plan.metadata?.name;
    return {
      inventory: this.inventoryFor(plan),
      ...this.mapsOf(plan),
      // A VM this plan made (a migration ran) is not a conflict.
      vmExists: (ns, name) => {
        const vm = this.vms.get(`${ns}/${name}`);
        return !!vm && vm.metadata.labels?.['forklift.konveyor.io/plan'] !== planName;
      },
      classMaxBytes: (sc) => {
        const q = o(o(this.classes.get(sc)).parameters).maxVolumeSize;
        return typeof q === 'string' ? tryParseQuantity(q) : undefined;
      },
      mapReady: hasReady,
      hookState: (ns, name) => {
        const h = this.hooks.get(`${ns}/${name}`);
        return !h ? 'NotFound' : hasReady(h as Obj) ? 'Ready' : 'NotReady';
      },
      virtV2v: this.nodes.list().some(nodeHasVirtV2v),
      // Warm: the host provider (this cluster's agents on both sides, ./warm-ops.ts) or vSphere (CBT, ./vsphere/warm.ts).
      warmSupported: (() => {
        const ref = o(o(o(plan.spec).provider).source);
        const p = this.providers.get(`${String(ref.namespace || plan.metadata?.namespace)}/${String(ref.name)}`);
        // vSphere: CBT rounds (./vsphere/warm.ts).
        return (o(p?.spec).type === 'openshift' && !o(p?.spec).url) || o(p?.spec).type === 'vsphere';
      })(),
    };
  }

  /** Starts a Migration of a Ready plan in the background; its run writes the status. */
  private async reconcileMigration(key: string): Promise<void> {
    const m = this.migrations.get(key);
    if (!m || m.metadata.deletionTimestamp) return;
    const uid = m.metadata.uid ?? key;
    const current = this.running.get(uid);
    if (current) return current.run.checkCancel();
    if (o(m.status).completed) return;
    const ref = o(o(m.spec).plan);
    const planKey = `${typeof ref.namespace === 'string' && ref.namespace ? ref.namespace : m.metadata.namespace}/${String(ref.name ?? '')}`;
    const plan = this.plans.get(planKey);
    const { concerns, vms } = plan ? planConcerns(plan as Obj, this.planContext(plan)) : { concerns: [], vms: [] };
    if (!plan || !concerns.some((c) => c.type === 'Ready')) {
      await updateStatus(this.client, FORKLIFT_MIGRATIONS, m.metadata.namespace, m.metadata.name, (s) => {
        s.conditions = toConditions(
          [
            {
              type: 'PlanNotReady',
              status: 'True',
              category: 'Critical',
              reason: plan ? 'NotReady' : 'NotFound',
              message: `Plan ${planKey} ${plan ? 'is not Ready' : 'not found'}.`,
            },
          ],
          s.conditions,
        );
      });
      return;
    }
    const { networkMap, storageMap } = this.mapsOf(plan);
    const entry = (map: Obj | undefined, match: (src: Obj) => boolean): Obj | undefined =>
      ((o(map?.spec).map as unknown[] | undefined) ?? []).map(o).find((e) => match(o(e.source)));
    const provider = this.providers.get(
      `${String(o(o(o(plan.spec).provider).source).namespace || plan.metadata.namespace)}/${String(o(o(o(plan.spec).provider).source).name)}`,
    );
    const url = String(o(provider?.spec).url ?? '');
    const inv = this.inventoryFor(plan);
    // A map entry names a network or datastore by id or name; the VM refers to it by id.
    const named = (list: { id: string; name: string }[] | undefined, id: string) => (raw: Obj) => {
      const src = mapSource(raw);
      return src.id === id || src.name === id || (!!list?.find((x) => x.id === id) && src.name === list.find((x) => x.id === id)?.name);
    };
    const ova = async (v: PlanVmResult): Promise<DiskOpener> => {
      const pkg = join(await allowedDir(ovaPath(url), this.ovaRoots), v.vm.source);
      const ranges = (await openPackage(pkg, v.vm.source)).disks;
      const open: DiskOpener = async (i) => {
        const range = ranges.get(v.vm.disks[i].file);
        if (!range) throw new Error(`disk file ${v.vm.disks[i].file} is no longer in ${v.vm.source}`);
        return { size: range.size, stream: createReadStream(range.path, { start: range.offset, end: range.offset + range.size - 1, highWaterMark: 1 << 20 }) };
      };
      // A node agent with the same OVA root converts the disk from the package itself (issue 14).
      open.inPlace = (i) => ({ package: pkg, member: v.vm.disks[i].file });
      return open;
    };
    const vsphere = async (v: PlanVmResult): Promise<DiskOpener> => {
      if (!provider) throw new Error('the source provider is gone');
      const client = await connect(url, await this.vsphereSecret(provider));
      try {
        // Cold: the source stops first, so the disks are consistent.
        await powerOff(client, v.vm.id);
      } catch (e) {
        client.close();
        throw e;
      }
      const dsName = (id: string) => inv?.datastores.find((d) => d.id === id)?.name;
      const open: DiskOpener = (i) => openDisk(client, v.vm as VsphereVm, i, dsName);
      // The run calls it after the VM's disks are sent (or on failure): the session ends.
      open.close = () => client.logout().finally(() => client.close());
      return open;
    };
    const networkOf = (id: string) => {
      const d = entry(networkMap, named(inv?.networks, id))?.destination;
      return d ? (o(d) as { type: string; name?: string; namespace?: string }) : undefined;
    };
    // openshift: Initialize stops the source VM and exports it; disks are read from the export's raw
    // links into the upload DataVolumes; the VM is the source's spec; close deletes the export.
    const openshift = async (v: PlanVmResult): Promise<DiskOpener> => {
      if (!provider) throw new Error('the source provider is gone');
      const { src, url: srcUrl } = await this.openshiftSource(provider);
      const vm = v.vm as OpenshiftVm;
      let session;
      try {
        session = await startSourceVm(src, vm, m.metadata.uid ?? m.metadata.name);
      } catch (e) {
        if (src.owned) src.client.close();
        throw e;
      }
      const s = session;
      const open: DiskOpener = (i) => s.open(i);
      const targetNs = String(o(plan.spec).targetNamespace ?? '');
      const base = exportName(m.metadata.uid ?? m.metadata.name, v.targetName);
      // Another cluster: the node's importer pulls each disk from the export (an http DataVolume
      // with the token as an extra header and the export's CA). This cluster's own export is
      // served by the API server, which the importer may not reach (its egress policy): streamed here.
      const remote = !!srcUrl && new URL(srcUrl).origin !== new URL(this.client.config.server).origin;
      const made: [typeof SECRETS, string][] = [];
      if (remote)
        open.dataVolumeSource = async (i) => {
          const l = s.link(i);
          const secret = `${base}-hdr`.slice(0, 63);
          const ca = `${base}-ca`.slice(0, 63);
          if (!made.length) {
            const meta = (name: string) => ({ name, namespace: targetNs, labels: { 'forklift.konveyor.io/plan': plan.metadata.name } });
            const ensure = (ref: typeof SECRETS, body: KubeObject) =>
              this.client.create(ref, body, { namespace: targetNs }).catch((e: unknown) => {
                if (!isStatusError(e, 'AlreadyExists')) throw e;
              });
            made.push([SECRETS, secret], [CONFIGMAPS, ca]);
            await ensure(SECRETS, { apiVersion: 'v1', kind: 'Secret', metadata: meta(secret), stringData: { token: `x-kubevirt-export-token:${l.token}` } });
            await ensure(CONFIGMAPS, { apiVersion: 'v1', kind: 'ConfigMap', metadata: meta(ca), data: { 'ca.pem': l.cert } });
          }
          return { http: { url: l.url, secretExtraHeaders: [secret], ...(l.cert.includes('BEGIN CERTIFICATE') ? { certConfigMap: ca } : {}) } };
        };
      open.close = async () => {
        for (const [ref, name] of made) await this.client.delete(ref, name, { namespace: targetNs }).catch(() => undefined);
        await s.close().finally(() => src.owned && src.client.close());
      };
      open.targetVm = async (pv, ns) => {
        // MACs are kept unless another VM of this cluster has one (the source itself, when it is here).
        const taken = new Set<string>();
        for (const other of this.vms.list())
          for (const i of (o(o(o(o(other.spec).template).spec).domain).devices as { interfaces?: { macAddress?: string }[] } | undefined)?.interfaces ?? [])
            if (i.macAddress) taken.add(i.macAddress.toLowerCase());
        return openshiftTargetVm({
          source: s.vm,
          vm,
          name: pv.targetName,
          namespace: ns,
          claims: vm.disks.map((_, i) => claimName(pv, i)),
          network: networkOf,
          macTaken: (mac) => taken.has(mac),
          power: o(plan.spec).targetPowerState,
          wasRunning: s.wasRunning,
          labels: { 'forklift.konveyor.io/plan': plan.metadata.name, 'forklift.konveyor.io/vm-id': vm.id },
        });
      };
      return open;
    };
    const type = o(provider?.spec).type;
    const run = new MigrationRun(
      this.client,
      {
        migration: m,
        plan,
        vms,
        initialize: type === 'vsphere' ? vsphere : type === 'openshift' ? openshift : ova,
        // Warm: a running VM of this cluster (the host provider) is copied while it runs
        // (./warm-ops.ts); a stopped one migrates cold. Other sources are refused at validation.
        warm: (v) => {
          if (type === 'vsphere' && provider && (v.vm as VsphereVm).powerState === 'poweredOn') {
            // vSphere: CBT rounds (./vsphere/warm.ts); a powered-off VM migrates cold.
            const disk = v.vm.disks[0];
            return vsphereWarmOps(this.client, {
              connect: async () => connect(url, await this.vsphereSecret(provider)),
              vm: v.vm as VsphereVm,
              datastoreName: (id) => inv?.datastores.find((d) => d.id === id)?.name,
              claim: (i) => claimName(v, i),
              targetNamespace: String(o(plan.spec).targetNamespace ?? ''),
              id: `${uid}/${v.vm.id}`,
              storageClass: disk
                ? (o(entry(storageMap, named(inv?.datastores, disk.datastore ?? ''))?.destination).storageClass as string | undefined)
                : undefined,
              labels: { 'forklift.konveyor.io/plan': plan.metadata.name, 'forklift.konveyor.io/vm-id': v.vm.id },
              targetVm: () => targetVm(v, String(o(plan.spec).targetNamespace ?? ''), plan, { network: networkOf }),
              onCopy: (r) =>
                this.log(`forklift: ${key}: ${v.vm.name} ${r.volume} ${r.snapshot} since ${r.changeId}: ${r.areas} areas, ${r.bytes} bytes, ${r.ms} ms`),
            });
          }
          const vm = v.vm as OpenshiftVm;
          if (type !== 'openshift' || url || vm.powerState !== 'poweredOn') return undefined;
          const disk = vm.disks[0];
          return clusterWarmOps(this.client, {
            namespace: vm.namespace,
            name: vm.name,
            targetNamespace: String(o(plan.spec).targetNamespace ?? ''),
            targetName: v.targetName,
            id: `${uid}/${vm.id}`,
            storageClass: disk ? (o(entry(storageMap, named(inv?.datastores, disk.datastore))?.destination).storageClass as string | undefined) : undefined,
            start: o(plan.spec).targetPowerState !== 'off',
            labels: { 'forklift.konveyor.io/plan': plan.metadata.name, 'forklift.konveyor.io/vm-id': vm.id },
          });
        },
        cutover: () => {
          const at = o(this.migrations.get(key)?.spec).cutover;
          return typeof at === 'string' ? Date.parse(at) : undefined;
        },
        precopyIntervalMs: this.opts.precopyIntervalMs,
        // Without virt-v2v on any node the VM migrates unconverted (the plan's GuestConversionSkipped).
        convert: (v) => conversionWanted(v.vm, o(plan.spec)) && this.nodes.list().some(nodeHasVirtV2v),
        storage: (source) => o(entry(storageMap, named(inv?.datastores, source))?.destination) as { storageClass: string },
        network: networkOf,
        maxInFlight: this.opts.maxInFlight,
        // The Migration as the informer has it now: `vessel plan cancel` edits spec.cancel while it runs.
        canceled: (v) => cancelNames(o(this.migrations.get(key)?.spec).cancel, v.vm),
        runHook: async (h, v) => {
          const hook = this.hooks.get(`${h.namespace}/${h.name}`);
          if (!hook) throw new Error(`hook ${h.namespace}/${h.name} not found`);
          const targetNamespace = String(o(plan.spec).targetNamespace ?? '');
          await runHook(
            hook,
            {
              step: h.step,
              plan,
              vm: { id: v.vm.id, name: v.vm.name, targetName: v.targetName, namespace: targetNamespace },
              migration: { name: m.metadata.name, namespace: m.metadata.namespace ?? '' },
            },
            this.opts.hooks ?? {},
          );
        },
      },
      this.log,
    );
    this.running.set(uid, {
      run,
      done: run
        .run()
        .catch((e: unknown) => this.log(`forklift: migration ${key}: ${e instanceof Error ? e.message : e}`))
        .finally(() => this.running.delete(uid)),
    });
  }
}

const hasReady = (m: Obj): boolean => ((o(m.status).conditions as Obj[] | undefined) ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
