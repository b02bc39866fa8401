/**
 * The volume binder: picks the node that provisions each claim of a Vessel storage class
 * (annotation volume.kubernetes.io/selected-node, as Kubernetes' scheduler sets it), and fills
 * in the default class when a claim names none. Pools belong to nodes (a node lists them in
 * its vessel.io/pools annotation), so only a Ready node with the class's pool qualifies, and a
 * clone of a volume in a node-local pool must be made on that node.
 *
 * WaitForFirstConsumer classes wait for the VM scheduler, except for claims a DataVolume
 * fills (CDI imports them at once; see docs/design.md) or that ask to bind immediately.
 */
import { storage, refs, annotationsOf } from '@vessel/api';
import type { Client } from '@vessel/client';
import type { IoK8sApiCoreV1PersistentVolumeClaim, IoK8sApiStorageV1StorageClass } from '@kubevirt-ui-ext/kubevirt-api/kubernetes';
import { BY_NODE, byNode, Controller, splitKey, type Log, EventRecorder, cacheKey, type Informer, type KubeObject, type Typed } from '@vessel/runtime';

const { NODES, PVCS, STORAGE_CLASSES } = refs;

export function defaultClass(classes: KubeObject[]): KubeObject | undefined {
  return classes.find((c) => c.metadata.annotations?.['storageclass.kubernetes.io/is-default-class'] === 'true');
}

type Claim = Typed<IoK8sApiCoreV1PersistentVolumeClaim>;
type StorageClass = Typed<IoK8sApiStorageV1StorageClass>;

export class VolumeBinder extends Controller {
  private readonly pvcs: Informer<Claim>;
  private readonly nodes: Informer;
  private readonly classes: Informer<StorageClass>;
  private readonly events: EventRecorder;
  /** Claims told "waiting for first consumer", so the Event is recorded once. */
  private readonly waiting = new Set<string>();

  constructor(client: Client, log?: Log) {
    super('volume-binder', client, log);
    this.events = new EventRecorder(client, 'vessel-volume-binder');
    this.pvcs = this.inform<Claim>(PVCS).addIndex(BY_NODE, byNode);
    // A node or class appearing can unblock every pending claim.
    const pending = () =>
      this.pvcs
        .list()
        .filter((p) => !annotationsOf(p)[storage.SELECTED_NODE])
        .map(cacheKey);
    this.nodes = this.inform(NODES, pending);
    this.classes = this.inform<StorageClass>(STORAGE_CLASSES, pending);
  }

  protected async reconcile(key: string): Promise<void> {
    const pvc = this.pvcs.get(key);
    if (!pvc || pvc.metadata.deletionTimestamp || annotationsOf(pvc)[storage.SELECTED_NODE]) return;
    const spec = pvc.spec ?? {};
    let className = spec.storageClassName;
    if (!className) {
      const def = defaultClass(this.classes.list());
      if (!def) return this.warn(pvc, 'ProvisioningFailed', 'no storage class named and no default StorageClass: set spec.storageClassName');
      className = def.metadata.name;
      await this.client.patch(PVCS, pvc.metadata.name, { spec: { storageClassName: className } }, { namespace: pvc.metadata.namespace });
      return; // the update brings the claim back with its class
    }
    const sc = this.classes.get(className);
    if (!sc) return this.warn(pvc, 'ProvisioningFailed', `storageclass.storage.k8s.io "${className}" not found`);
    if (sc.provisioner !== storage.PROVISIONER) return; // someone else's class
    const pool = sc.parameters?.pool ?? className;
    const a = annotationsOf(pvc);
    const populated = !!a[storage.POPULATED_FOR] || a[storage.BIND_IMMEDIATE] === 'true';
    if (sc.volumeBindingMode === 'WaitForFirstConsumer' && !populated) {
      if (!this.waiting.has(key)) {
        this.waiting.add(key);
        await this.events.record(pvc, 'Normal', 'WaitForFirstConsumer', 'waiting for first consumer to be created before binding');
      }
      return;
    }
    const node = this.chooseNode(pvc, pool);
    if (typeof node !== 'string') return this.warn(pvc, 'ProvisioningFailed', node.why);
    await this.client.patch(
      PVCS,
      pvc.metadata.name,
      { metadata: { resourceVersion: pvc.metadata.resourceVersion, annotations: { [storage.SELECTED_NODE]: node } } },
      { namespace: pvc.metadata.namespace },
    );
    this.waiting.delete(key);
    await this.events.record(pvc, 'Normal', 'Provisioning', `volume will be made in pool "${pool}" by node ${node}`);
  }

  /** A Ready node serving `pool`; the clone source's node when either pool is node-local. */
  private chooseNode(pvc: KubeObject, pool: string): string | { why: string } {
    const ready = this.nodes
      .list()
      .filter((n) => storage.isNodeReady(n) && storage.nodePools(n)[pool])
      .sort((x, y) => x.metadata.name.localeCompare(y.metadata.name));
    if (ready.length === 0) return { why: `no Ready node serves pool "${pool}": start a vessel agent, or check \`vessel get nodes\`` };
    const source = annotationsOf(pvc)[storage.CLONE_SOURCE];
    if (source) {
      const { namespace, name } = splitKey(source);
      const src = this.pvcs.get(`${namespace}/${name}`);
      const srcNode = src && annotationsOf(src)[storage.SELECTED_NODE];
      if (!src || !srcNode) return { why: `clone source ${source} is not provisioned yet` };
      const srcPool = annotationsOf(src)[storage.VOLUME_POOL];
      const targetShared = storage.nodePools(ready[0])[pool].shared;
      const srcNodeObj = this.nodes.get(srcNode);
      const srcShared = !!(srcNodeObj && srcPool && storage.nodePools(srcNodeObj)[srcPool]?.shared);
      if (!srcShared || !targetShared) {
        if (!ready.some((n) => n.metadata.name === srcNode))
          return { why: `clone source ${source} lives on node ${srcNode}, which is not Ready or has no pool "${pool}"` };
        return srcNode;
      }
    }
    // Spread: the node with the fewest claims so far.
    const load = (n: KubeObject) => this.pvcs.byIndex(BY_NODE, n.metadata.name).length;
    return ready.reduce((best, n) => (load(n) < load(best) ? n : best)).metadata.name;
  }

  private async warn(pvc: KubeObject, reason: string, message: string): Promise<void> {
    await this.events.record(pvc, 'Warning', reason, message);
    this.queue.addAfter(cacheKey(pvc), 5000);
  }
}
