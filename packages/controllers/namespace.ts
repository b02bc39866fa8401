/**
 * The namespace controller: when a Namespace is deleted (it then shows Terminating), delete
 * everything in it, and once it is empty remove the `kubernetes` finalizer so the API server
 * lets the Namespace go.
 */
import { findByResource, kinds } from '@vessel/api';
import { resourcePath, type Client } from '@vessel/client';
import { Informer, type KubeObject, listWatchFor, runWorkers, WorkQueue } from '@vessel/runtime';

export class NamespaceController {
  private readonly info = findByResource('', 'v1', 'namespaces')!;
  private readonly informer: Informer;
  private readonly queue = new WorkQueue({ baseDelayMs: 100, maxDelayMs: 5000 });
  private workers?: Promise<void[]>;

  constructor(
    private readonly client: Client,
    private readonly log: (line: string) => void = () => {},
  ) {
    this.informer = new Informer(listWatchFor(client, this.info), (e) => this.log(`namespace: ${e instanceof Error ? e.message : e}`));
    const enqueue = (o: KubeObject) => {
      if (o.metadata.deletionTimestamp) this.queue.add(o.metadata.name);
    };
    this.informer.on({ add: enqueue, update: (_o, n) => enqueue(n) });
  }

  async start(): Promise<void> {
    this.informer.start();
    await this.informer.waitForSync();
    this.workers = runWorkers(this.queue, 1, (name) => this.reconcile(name));
  }

  async stop(): Promise<void> {
    this.informer.stop();
    this.queue.shutdown();
    await this.workers;
  }

  private async reconcile(name: string): Promise<void> {
    const ns = this.informer.get(name);
    if (!ns?.metadata.deletionTimestamp) return;
    let remaining = 0;
    for (const info of kinds.filter((k) => k.namespaced)) {
      const list = await this.client.list(info, { namespace: name });
      remaining += list.items.length;
      if (list.items.length) {
        await this.client.request('DELETE', resourcePath(info, name), {
          body: { kind: 'DeleteOptions', apiVersion: 'v1', propagationPolicy: 'Background' },
        });
      }
    }
    if (remaining > 0) {
      // Objects with finalizers of their own take a while: look again soon.
      this.queue.addAfter(name, 500);
      return;
    }
    const spec = (ns.spec as { finalizers?: string[] } | undefined) ?? {};
    const finalizers = (spec.finalizers ?? []).filter((f) => f !== 'kubernetes');
    this.log(`namespace: ${name} is empty; finalizing`);
    await this.client.patch(this.info, name, {
      metadata: { resourceVersion: ns.metadata.resourceVersion },
      spec: { finalizers: finalizers.length ? finalizers : null },
    });
  }
}
