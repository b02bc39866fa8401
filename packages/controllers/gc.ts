/**
 * The garbage collector: deletes objects whose owners (metadata.ownerReferences) are all
 * gone, and carries out the Foreground and Orphan deletion policies the API server records
 * as the `foregroundDeletion` and `orphan` finalizers. Owners are checked with a live GET
 * by uid before anything is deleted, so a lagging cache never deletes a live object.
 */
import { kinds } from '@vessel/api';
import type { KindInfo } from '@vessel/api';
import { isNotFound, resourcePath, type Client } from '@vessel/client';
import { Informer, type KubeObject, listWatchFor, runWorkers, WorkQueue } from '@vessel/runtime';

interface OwnerRef {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  blockOwnerDeletion?: boolean;
}
interface Node {
  info: KindInfo;
  obj: KubeObject;
}

const ownersOf = (o: KubeObject) => (o.metadata.ownerReferences as OwnerRef[] | undefined) ?? [];
const finalizersOf = (o: KubeObject) => (o.metadata.finalizers as string[] | undefined) ?? [];

export class GarbageCollector {
  private readonly informers: Informer[] = [];
  /** uid -> object, across all kinds. */
  private readonly nodes = new Map<string, Node>();
  /** owner uid -> dependent uids. */
  private readonly dependents = new Map<string, Set<string>>();
  private readonly queue = new WorkQueue();
  private workers?: Promise<void[]>;

  constructor(
    private readonly client: Client,
    private readonly log: (line: string) => void = () => {},
  ) {}

  async start(): Promise<void> {
    for (const info of kinds) {
      const inf = new Informer(listWatchFor(this.client, info), (e) => this.log(`gc: ${info.plural}: ${e instanceof Error ? e.message : e}`));
      inf.on({
        add: (o) => this.observe(info, o),
        update: (_old, o) => this.observe(info, o),
        delete: (o) => this.forget(o),
      });
      this.informers.push(inf);
      inf.start();
    }
    await Promise.all(this.informers.map((i) => i.waitForSync()));
    this.workers = runWorkers(
      this.queue,
      2,
      (uid) => this.reconcile(uid),
      (uid, e) => this.log(`gc: ${uid}: ${e instanceof Error ? e.message : e}`),
    );
  }

  async stop(): Promise<void> {
    this.informers.forEach((i) => i.stop());
    this.queue.shutdown();
    await this.workers;
  }

  private observe(info: KindInfo, obj: KubeObject): void {
    const uid = obj.metadata.uid;
    if (!uid) return;
    const before = this.nodes.get(uid);
    for (const ref of before ? ownersOf(before.obj) : []) this.dependents.get(ref.uid)?.delete(uid);
    this.nodes.set(uid, { info, obj });
    for (const ref of ownersOf(obj)) {
      if (!this.dependents.has(ref.uid)) this.dependents.set(ref.uid, new Set());
      this.dependents.get(ref.uid)!.add(uid);
    }
    if (ownersOf(obj).length || (obj.metadata.deletionTimestamp && finalizersOf(obj).some((f) => f === 'orphan' || f === 'foregroundDeletion'))) {
      this.queue.add(uid);
    }
    // A dependent waiting on this owner's foreground deletion may be able to go now.
    for (const ref of ownersOf(obj)) if (this.nodes.get(ref.uid)?.obj.metadata.deletionTimestamp) this.queue.add(ref.uid);
  }

  private forget(obj: KubeObject): void {
    const uid = obj.metadata.uid;
    if (!uid) return;
    this.nodes.delete(uid);
    for (const ref of ownersOf(obj)) {
      this.dependents.get(ref.uid)?.delete(uid);
      if (this.nodes.has(ref.uid)) this.queue.add(ref.uid);
    }
    for (const dep of this.dependents.get(uid) ?? []) this.queue.add(dep);
  }

  private async reconcile(uid: string): Promise<void> {
    const node = this.nodes.get(uid);
    if (!node) return;
    const { info, obj } = node;
    const meta = obj.metadata;
    if (meta.deletionTimestamp && finalizersOf(obj).includes('orphan')) return this.orphanDependents(node);
    if (meta.deletionTimestamp && finalizersOf(obj).includes('foregroundDeletion')) return this.deleteDependentsFirst(node);
    const owners = ownersOf(obj);
    if (!owners.length || meta.deletionTimestamp) return;
    const states = await Promise.all(owners.map((ref) => this.ownerState(ref, meta.namespace)));
    if (states.every((s) => s === 'absent')) {
      this.log(`gc: deleting ${info.plural} ${meta.namespace ? meta.namespace + '/' : ''}${meta.name}: all owners are gone`);
      await this.deleteObject(info, obj, 'Background');
    } else if (states.some((s, i) => s === 'foreground' && owners[i].blockOwnerDeletion)) {
      await this.deleteObject(info, obj, 'Foreground');
    }
  }

  /** 'absent' only after the server confirms: no object by that name, or one with another uid. */
  private async ownerState(ref: OwnerRef, namespace: string | undefined): Promise<'present' | 'absent' | 'foreground'> {
    const info =
      kinds.find((k) => k.kind === ref.kind && (k.group ? `${k.group}/${k.version}` : k.version) === ref.apiVersion) ??
      kinds.find((k) => k.kind === ref.kind && ref.apiVersion.split('/')[0] === k.group);
    if (!info) return 'present'; // an owner kind we do not serve: never collect on its account
    try {
      const owner = (await this.client.get(info, ref.name, { namespace: info.namespaced ? namespace : undefined })) as KubeObject;
      if (owner.metadata.uid !== ref.uid) return 'absent';
      return owner.metadata.deletionTimestamp && finalizersOf(owner).includes('foregroundDeletion') ? 'foreground' : 'present';
    } catch (e) {
      if (isNotFound(e)) return 'absent';
      throw e;
    }
  }

  private async deleteObject(info: KindInfo, obj: KubeObject, propagationPolicy: 'Background' | 'Foreground'): Promise<void> {
    try {
      await this.client.request('DELETE', objectPath(info, obj), {
        body: { kind: 'DeleteOptions', apiVersion: 'v1', propagationPolicy, preconditions: { uid: obj.metadata.uid } },
      });
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  }

  private async orphanDependents(node: Node): Promise<void> {
    const uid = node.obj.metadata.uid!;
    for (const dep of [...(this.dependents.get(uid) ?? [])]) {
      const d = this.nodes.get(dep);
      if (!d) continue;
      const refs = ownersOf(d.obj).filter((r) => r.uid !== uid);
      await this.patchOrIgnore(d, { metadata: { ownerReferences: refs.length ? refs : null, resourceVersion: d.obj.metadata.resourceVersion } });
    }
    await this.removeFinalizer(node, 'orphan');
  }

  private async deleteDependentsFirst(node: Node): Promise<void> {
    const deps = [...(this.dependents.get(node.obj.metadata.uid!) ?? [])].map((d) => this.nodes.get(d)).filter((d): d is Node => !!d);
    if (deps.length === 0) return this.removeFinalizer(node, 'foregroundDeletion');
    for (const d of deps) if (!d.obj.metadata.deletionTimestamp) await this.deleteObject(d.info, d.obj, 'Foreground');
    // The dependents' DELETED events queue this owner again.
  }

  private async removeFinalizer(node: Node, finalizer: string): Promise<void> {
    const finalizers = finalizersOf(node.obj).filter((f) => f !== finalizer);
    await this.patchOrIgnore(node, { metadata: { finalizers: finalizers.length ? finalizers : null, resourceVersion: node.obj.metadata.resourceVersion } });
  }

  private async patchOrIgnore(node: Node, patch: unknown): Promise<void> {
    try {
      await this.client.request('PATCH', objectPath(node.info, node.obj), { body: patch, contentType: 'application/merge-patch+json' });
    } catch (e) {
      if (!isNotFound(e)) throw e; // a 409 retries with the next cached version
    }
  }
}

function objectPath(info: KindInfo, obj: KubeObject): string {
  return resourcePath(info, obj.metadata.namespace, obj.metadata.name);
}
