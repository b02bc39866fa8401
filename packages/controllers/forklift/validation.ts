/**
 * What Forklift's controllers decide about maps and plans, as pure functions of the objects and
 * the provider's inventory: the conditions they report (Forklift's types, reasons and
 * categories: Critical blocks, Warn and Advisory inform) and whether they are Ready.
 */
import type { Inventory, InventoryVm } from './ova.ts';
import { diskFileName, pvcName, TemplateError } from './template.ts';
import { conversionConcerns } from './conversion.ts';
import { isOpenshiftVm, openshiftVmConcerns } from './openshift/inventory.ts';

export type Category = 'Critical' | 'Error' | 'Warn' | 'Advisory' | 'Required';
export interface Concern {
  type: string;
  status: 'True' | 'False';
  category: Category;
  reason?: string;
  message: string;
  /** The VMs or map entries concerned, as Forklift lists them ("id:…, name:…" or "[0]"). */
  items?: string[];
}

type Obj = Record<string, unknown>;
const o = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const a = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const s = (v: unknown): string | undefined => (typeof v === 'string' && v ? v : undefined);

/**
 * A map entry's source as the inventory names it: openshift's `{type: pod}` is the network `pod`,
 * and a NAD's `{namespace, name}` is `namespace/name` (its inventory name); other sources as they are.
 */
export function mapSource(src: Obj): Obj {
  if (s(src.id) || !(src.type === 'pod' || (s(src.namespace) && s(src.name)))) return src;
  return src.type === 'pod' ? { id: 'pod' } : { name: `${s(src.namespace)}/${s(src.name)}` };
}

/** A condition list is Ready when nothing Critical (or Error) is True. */
export const ready = (concerns: Concern[]): boolean => !concerns.some((c) => c.status === 'True' && (c.category === 'Critical' || c.category === 'Error'));

const readyCondition = (concerns: Concern[]): Concern[] =>
  ready(concerns) ? [...concerns, { type: 'Ready', status: 'True', category: 'Required', message: 'The resource is ready.' }] : concerns;

/** A source reference (`id` or `name`) resolved against a list: the entry, or why not. */
function resolve<T extends { id: string; name: string }>(ref: Obj, list: readonly T[]): T | 'NotSet' | 'NotFound' | 'Ambiguous' {
  const id = s(ref.id);
  const name = s(ref.name);
  if (!id && !name) return 'NotSet';
  const ns = s(ref.namespace);
  // openshift VMs: `{namespace, name}` (names repeat across namespaces).
  const hits = id ? list.filter((x) => x.id === id) : list.filter((x) => x.name === name && (!ns || (x as { namespace?: string }).namespace === ns));
  return hits.length === 0 ? 'NotFound' : hits.length > 1 ? 'Ambiguous' : hits[0];
}

function providerConcern(inv: Inventory | undefined): Concern[] {
  return inv
    ? []
    : [{ type: 'SourceProviderNotReady', status: 'True', category: 'Critical', reason: 'NotFound', message: 'The source provider is not ready.' }];
}

/**
 * A NetworkMap's conditions: every source network exists in the inventory, every `multus`
 * destination names an existing NetworkAttachmentDefinition (namespace defaulting to the map's).
 */
export function networkMapConcerns(map: Obj, inv: Inventory | undefined, nadExists: (ns: string, name: string) => boolean): Concern[] {
  const out = providerConcern(inv);
  const bad = { NotSet: [] as string[], NotFound: [] as string[], Ambiguous: [] as string[] };
  const badDest: string[] = [];
  a(o(map.spec).map).forEach((e, i) => {
    const src = mapSource(o(o(e).source));
    if (inv) {
      const r = resolve(src, inv.networks);
      if (typeof r === 'string') bad[r].push(`[${i}]`);
    }
    const dst = o(o(e).destination);
    if (dst.type === 'multus' && !(s(dst.name) && nadExists(s(dst.namespace) ?? s(o(map.metadata).namespace) ?? '', s(dst.name)!))) badDest.push(`[${i}]`);
  });
  if (bad.NotSet.length)
    out.push({
      type: 'SourceNetworkNotValid',
      status: 'True',
      category: 'Critical',
      reason: 'NotSet',
      message: 'Source network: either `ID` or `Name` required.',
      items: bad.NotSet,
    });
  if (bad.NotFound.length)
    out.push({
      type: 'SourceNetworkNotValid',
      status: 'True',
      category: 'Critical',
      reason: 'NotFound',
      message: 'Source network not found.',
      items: bad.NotFound,
    });
  if (bad.Ambiguous.length)
    out.push({
      type: 'SourceNetworkNotValid',
      status: 'True',
      category: 'Critical',
      reason: 'Ambiguous',
      message: 'Source network has ambiguous ref.',
      items: bad.Ambiguous,
    });
  if (badDest.length)
    out.push({
      type: 'DestinationNetworkNotValid',
      status: 'True',
      category: 'Critical',
      reason: 'NotFound',
      message: 'Destination network (NAD) not found.',
      items: badDest,
    });
  return readyCondition(merge(out));
}

/** A StorageMap's conditions: every source datastore (an OVA package) exists, every StorageClass exists. */
export function storageMapConcerns(map: Obj, inv: Inventory | undefined, classExists: (name: string) => boolean): Concern[] {
  const out = providerConcern(inv);
  const bad = { NotSet: [] as string[], NotFound: [] as string[], Ambiguous: [] as string[] };
  const badDest: string[] = [];
  a(o(map.spec).map).forEach((e, i) => {
    if (inv) {
      const r = resolve(o(o(e).source), inv.datastores);
      if (typeof r === 'string') bad[r].push(`[${i}]`);
    }
    const sc = s(o(o(e).destination).storageClass);
    if (!sc || !classExists(sc)) badDest.push(`[${i}]`);
  });
  for (const [reason, items] of Object.entries(bad))
    if (items.length)
      out.push({
        type: 'SourceStorageNotValid',
        status: 'True',
        category: 'Critical',
        reason,
        message: `Source storage ${reason === 'NotSet' ? 'ref not set' : reason === 'NotFound' ? 'not found' : 'has ambiguous ref'}.`,
        items,
      });
  if (badDest.length)
    out.push({
      type: 'DestinationStorageNotValid',
      status: 'True',
      category: 'Critical',
      reason: 'NotFound',
      message: 'Destination storage class not found.',
      items: badDest,
    });
  return readyCondition(merge(out));
}

/** One condition per type and reason, items concatenated (Forklift reports them so). */
function merge(list: Concern[]): Concern[] {
  const out: Concern[] = [];
  for (const c of list) {
    const hit = out.find((x) => x.type === c.type && x.reason === c.reason);
    if (hit) hit.items = [...(hit.items ?? []), ...(c.items ?? [])];
    else out.push({ ...c });
  }
  return out;
}

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** A DNS-1123 label made from `name`, as Forklift's changeVmName does: lower case, invalid runs to '-', trimmed to 63. */
export function rfc1123Name(name: string): string {
  let n = name
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/-+/g, '-')
    .replace(/^-+|-+$/g, '');
  if (n.length > 63) n = n.slice(0, 63).replace(/-+$/, '');
  return n || 'vm';
}
export const isRfc1123 = (n: string): boolean => n.length <= 63 && DNS1123_LABEL.test(n);

export interface PlanContext {
  inventory: Inventory | undefined;
  /** The NetworkMap and StorageMap the plan names, undefined when missing. */
  networkMap: Obj | undefined;
  storageMap: Obj | undefined;
  vmExists: (namespace: string, name: string) => boolean;
  /** The largest volume a StorageClass allows (its `parameters.maxVolumeSize`), undefined when unbounded or unknown. */
  classMaxBytes: (storageClass: string) => number | undefined;
  /** Whether the map is Ready (its own conditions). */
  mapReady: (map: Obj) => boolean;
  /** A Hook's state (its own Ready condition); absent: every hook reference is NotFound. */
  /** Whether a Ready node runs virt-v2v (ImageConversion); undefined: not checked. */
  virtV2v?: boolean;
  hookState?: (namespace: string, name: string) => 'Ready' | 'NotReady' | 'NotFound';
  /** Whether the source provider can migrate warm (an `openshift` provider naming this cluster). */
  warmSupported?: boolean;
}

/** A hook a plan's VM runs at a step. */
export interface VmHook {
  step: 'PreHook' | 'PostHook';
  namespace: string;
  name: string;
}

export interface PlanVmResult {
  vm: InventoryVm;
  /** The target name: the source name, or a valid `newName` when it is not RFC 1123. */
  targetName: string;
  newName?: string;
  /** The claim (DataVolume) name of each disk, from the pvcNameTemplate; absent: `<target>-disk<i>`. */
  diskNames?: string[];
  hooks?: VmHook[];
}

const FIRMWARES = ['bios', 'efi'];

/** A Plan's concerns, Forklift's types and categories, with the VMs concerned as items; and each VM's target name. */
export function planConcerns(plan: Obj, ctx: PlanContext): { concerns: Concern[]; vms: PlanVmResult[] } {
  const spec = o(plan.spec);
  const out: Concern[] = providerConcern(ctx.inventory);
  const ns = s(spec.targetNamespace);
  if (!ns || !isRfc1123(ns))
    out.push({ type: 'NamespaceNotValid', status: 'True', category: 'Critical', reason: 'NotValid', message: 'Target namespace is not valid.' });
  const warm = spec.warm === true || spec.type === 'warm';
  if (warm && !ctx.warmSupported)
    out.push({
      type: 'MigrationTypeNotValid',
      status: 'True',
      category: 'Critical',
      reason: 'NotSupported',
      message: '`warm` migration from the source provider is not supported.',
    });
  const nm = ctx.networkMap;
  const sm = ctx.storageMap;
  if (!nm) out.push({ type: 'NetworkMapRefNotValid', status: 'True', category: 'Critical', reason: 'NotFound', message: 'Map.Network is not valid.' });
  else if (!ctx.mapReady(nm))
    out.push({ type: 'NetworkMapNotReady', status: 'True', category: 'Critical', message: 'Map.Network does not have Ready condition.' });
  if (!sm) out.push({ type: 'StorageRefNotValid', status: 'True', category: 'Critical', reason: 'NotFound', message: 'Map.Storage is not valid.' });
  else if (!ctx.mapReady(sm))
    out.push({ type: 'StorageMapNotReady', status: 'True', category: 'Critical', message: 'Map.Storage does not have Ready condition.' });
  const vms: PlanVmResult[] = [];
  if (ctx.inventory) {
    const inv = ctx.inventory;
    const netSources = a(o(nm?.spec).map).map((e) => mapSource(o(o(e).source)));
    const dsEntries = a(o(sm?.spec).map).map((e) => ({ src: o(o(e).source), dst: o(o(e).destination) }));
    const seen = new Set<string>();
    const targets = new Map<string, string>();
    const claims = new Set<string>();
    const planName = s(o(plan.metadata).name) ?? '';
    const planNs = s(o(plan.metadata).namespace) ?? '';
    for (const [i, ref] of a(spec.vms).map((v, i) => [i, o(v)] as const)) {
      const r = resolve(ref, inv.vms);
      const label = s(ref.id) ? `id:${s(ref.id)}` : `name:${s(ref.name) ?? ''}`;
      if (r === 'NotSet') {
        out.push({
          type: 'VMRefNotValid',
          status: 'True',
          category: 'Critical',
          reason: 'NotSet',
          message: 'Either `ID` or `Name` required.',
          items: [`[${i}]`],
        });
        continue;
      }
      if (r === 'NotFound') {
        out.push({ type: 'VMNotFound', status: 'True', category: 'Critical', reason: 'NotFound', message: 'VM not found.', items: [label] });
        continue;
      }
      if (r === 'Ambiguous') {
        out.push({ type: 'DuplicateVM', status: 'True', category: 'Critical', reason: 'Ambiguous', message: 'VM reference is ambiguous.', items: [label] });
        continue;
      }
      const item = `id:${r.id} name:'${r.name}'`;
      if (seen.has(r.id)) {
        out.push({ type: 'DuplicateVM', status: 'True', category: 'Critical', reason: 'NotUnique', message: 'Duplicate (source) VM.', items: [item] });
        continue;
      }
      seen.add(r.id);
      const wanted = s(ref.targetName);
      let targetName = wanted ?? r.name;
      let newName: string | undefined;
      if (!isRfc1123(targetName)) {
        newName = rfc1123Name(targetName);
        for (let k = 2; targets.has(newName) || (ns !== undefined && ctx.vmExists(ns, newName)); k++) newName = `${rfc1123Name(targetName).slice(0, 58)}-${k}`;
        out.push({
          type: 'TargetNameNotValid',
          status: 'True',
          category: 'Warn',
          reason: 'NotValid',
          message: `Target VM name does not comply with DNS1123 RFC, will be automatically changed.`,
          items: [`${item} newName:'${newName}'`],
        });
        targetName = newName;
      } else if (ns && ctx.vmExists(ns, targetName))
        out.push({ type: 'VMAlreadyExists', status: 'True', category: 'Critical', reason: 'NotUnique', message: 'Target VM already exists.', items: [item] });
      if (targets.has(targetName))
        out.push({
          type: 'DuplicateVM',
          status: 'True',
          category: 'Critical',
          reason: 'NotUnique',
          message: 'Two VMs of the plan have the same target name.',
          items: [item],
        });
      targets.set(targetName, r.id);
      // A NIC names its network by id (vSphere: `network-7`) or by name (OVA); a map entry by either.
      const netName = (id: string): string | undefined => inv.networks.find((n) => n.id === id)?.name;
      const netMapped = (id: string): boolean =>
        netSources.some((src) => s(src.id) === id || s(src.name) === id || (netName(id) !== undefined && s(src.name) === netName(id)));
      if (nm && r.nics.some((n) => !netMapped(n.network)))
        out.push({
          type: 'VMNetworksNotMapped',
          status: 'True',
          category: 'Critical',
          reason: 'NotValid',
          message: 'VM has unmapped networks.',
          items: [item],
        });
      // Each disk's storage: its datastore (vSphere, by id or name) or the VM's package (OVA).
      const dsName = (id: string): string | undefined => inv.datastores.find((d) => d.id === id)?.name;
      const entryFor = (id: string) =>
        dsEntries.find((e) => s(e.src.id) === id || s(e.src.name) === id || (dsName(id) !== undefined && s(e.src.name) === dsName(id)));
      const diskStores = r.disks.map((d) => d.datastore ?? r.source);
      if (sm && (diskStores.length ? diskStores : isOpenshiftVm(r) ? [] : [r.source]).some((id) => !entryFor(id)))
        out.push({ type: 'VMStorageNotMapped', status: 'True', category: 'Critical', reason: 'NotValid', message: 'VM has unmapped storage.', items: [item] });
      for (const sc of new Set(diskStores.map((id) => s(entryFor(id)?.dst.storageClass)).filter((x): x is string => !!x))) {
        const max = ctx.classMaxBytes(sc);
        if (max !== undefined && r.disks.some((d, k) => s(entryFor(diskStores[k])?.dst.storageClass) === sc && d.capacity > max))
          out.push({
            type: 'InvalidDiskSizes',
            status: 'True',
            category: 'Critical',
            reason: 'NotValid',
            message: `VM has disks larger than storage class ${sc} allows (${max} bytes).`,
            items: [item],
          });
      }
      // vSphere, warm only: a warm plan takes its own snapshots and needs CBT, which Forklift asks the user to enable.
      const vs = r as { snapshots?: string[]; changeTrackingEnabled?: boolean; unsupported?: string[] };
      if (warm && vs.snapshots?.length)
        out.push({
          type: 'VMHasSnapshots',
          status: 'True',
          category: 'Warn',
          reason: 'NotSupported',
          message: 'VM has snapshots; a warm migration takes its own and the existing ones are not carried over.',
          items: [`${item} snapshots:${vs.snapshots.length}`],
        });
      if (warm && vs.changeTrackingEnabled === false)
        out.push({
          type: 'ChangeTrackingNotEnabled',
          status: 'True',
          category: 'Critical',
          reason: 'NotEnabled',
          message: 'Changed Block Tracking (CBT) is not enabled on the VM; a warm migration needs it.',
          items: [item],
        });
      if (vs.unsupported?.length)
        out.push({
          type: 'UnsupportedDevices',
          status: 'True',
          category: 'Warn',
          reason: 'NotSupported',
          message: 'VM has devices that are not migrated.',
          items: vs.unsupported.map((u) => `${item} ${u}`),
        });
      if (isOpenshiftVm(r)) out.push(...openshiftVmConcerns(r, item, warm));
      if (!FIRMWARES.includes(r.firmware))
        out.push({
          type: 'UnsupportedFirmware',
          status: 'True',
          category: 'Critical',
          reason: 'NotSupported',
          message: 'VM firmware is neither BIOS nor EFI.',
          items: [`${item} firmware:'${r.firmware}'`],
        });
      const macs = r.nics.map((n) => n.mac).filter((m): m is string => !!m);
      if (new Set(macs).size !== macs.length)
        out.push({
          type: 'MacConflicts',
          status: 'True',
          category: 'Critical',
          reason: 'NotUnique',
          message: 'VM has NICs with the same MAC address.',
          items: [item],
        });
      // pvcNameTemplate (the VM's, else the plan's): each disk's name rendered now, so a bad one blocks the plan.
      const template = s(ref.pvcNameTemplate) ?? s(spec.pvcNameTemplate);
      let diskNames: string[] | undefined;
      try {
        // FileName: a vSphere or OVA disk's file (an openshift disk is a claim: Forklift gives it none);
        // WinDriveLetter: Vessel's inventory reads no guest-agent disk data, so always ''.
        const fileName = (f: string) => (isOpenshiftVm(r) ? '' : diskFileName(f));
        const names = r.disks.map((d, k) =>
          template
            ? pvcName(template, {
                VmName: targetName,
                PlanName: planName,
                DiskIndex: k,
                RootDiskIndex: 0,
                Shared: false,
                FileName: fileName(d.file),
                WinDriveLetter: '',
              })
            : `${targetName}-disk${k}`,
        );
        const dup = names.find((n, k) => claims.has(n) || names.indexOf(n) !== k);
        if (dup) throw new TemplateError(`"${dup}" names two disks of the plan`);
        names.forEach((n) => claims.add(n));
        if (template) diskNames = names;
      } catch (e) {
        if (!(e instanceof TemplateError)) throw e;
        out.push({
          type: 'PVCNameTemplateNotValid',
          status: 'True',
          category: 'Critical',
          reason: 'NotValid',
          message: 'The PVC name template does not give a valid, unique DNS-1123 name for every disk.',
          items: [`${item} ${e.message}`],
        });
      }
      const hooks: VmHook[] = [];
      for (const h of a(ref.hooks).map(o)) {
        const step = h.step;
        const hr = o(h.hook);
        const hns = s(hr.namespace) ?? planNs;
        const hname = s(hr.name) ?? '';
        if (step !== 'PreHook' && step !== 'PostHook') {
          out.push({
            type: 'HookStepNotValid',
            status: 'True',
            category: 'Critical',
            reason: 'NotValid',
            message: 'Hook step must be PreHook or PostHook.',
            items: [`${item} step:'${String(step ?? '')}'`],
          });
          continue;
        }
        if (hooks.some((x) => x.step === step)) {
          out.push({
            type: 'HookStepNotValid',
            status: 'True',
            category: 'Critical',
            reason: 'NotUnique',
            message: 'One hook per step.',
            items: [`${item} step:'${step}'`],
          });
          continue;
        }
        // Vessel's rule: a plan runs hooks of its own namespace only (another tenant's URL would get this plan's data).
        const state = hns !== planNs ? 'NotPermitted' : (ctx.hookState?.(hns, hname) ?? 'NotFound');
        if (state !== 'Ready')
          out.push({
            type: 'HookNotValid',
            status: 'True',
            category: 'Critical',
            reason: state,
            message:
              state === 'NotFound'
                ? 'Hook not found.'
                : state === 'NotPermitted'
                  ? "Hook is not in the plan's namespace."
                  : 'Hook does not have Ready condition.',
            items: [`${item} hook:${hns}/${hname}`],
          });
        hooks.push({ step, namespace: hns, name: hname });
      }
      vms.push({ vm: r, targetName, ...(newName ? { newName } : {}), ...(diskNames ? { diskNames } : {}), ...(hooks.length ? { hooks } : {}) });
    }
  }
  if (ctx.virtV2v !== undefined) out.push(...conversionConcerns(vms, spec, ctx.virtV2v));
  const merged = merge(out);
  if (ready(merged)) merged.push({ type: 'Ready', status: 'True', category: 'Required', message: 'The migration plan is ready.' });
  return { concerns: merged, vms };
}

/** Conditions as stored: Forklift's fields, lastTransitionTime kept while a condition holds. */
export function toConditions(concerns: Concern[], previous: unknown, now = new Date().toISOString()): Obj[] {
  const prev = a(previous).map(o);
  return concerns.map((c) => {
    const p = prev.find((x) => x.type === c.type && x.status === c.status && (x.reason ?? '') === (c.reason ?? ''));
    return {
      type: c.type,
      status: c.status,
      category: c.category,
      ...(c.reason ? { reason: c.reason } : {}),
      message: c.message,
      ...(c.items?.length ? { items: c.items } : {}),
      lastTransitionTime: (p?.lastTransitionTime as string | undefined) ?? now,
    };
  });
}
