/**
 * The shape every controller shares: informers that turn changes into keys, one work queue,
 * and workers that call `reconcile(key)` with client-go's guarantees (see workqueue.ts).
 * A controller reads its informers' caches and writes through the client.
 */
import type { Client, ResourceRef } from '@vessel/client';
import { Informer, cacheKey, type KubeObject } from './informer.ts';
import { listWatchFor } from './listwatch.ts';
import { runWorkers, WorkQueue } from './workqueue.ts';

export type Log = (line: string) => void;

export abstract class Controller {
  protected readonly queue = new WorkQueue({ baseDelayMs: 200, maxDelayMs: 30_000 });
  // Only started and stopped here, whatever they hold.
  private readonly informers: Pick<Informer, 'start' | 'stop' | 'waitForSync'>[] = [];
  private workers?: Promise<void[]>;

  constructor(
    readonly name: string,
    protected readonly client: Client,
    protected readonly log: Log = () => {},
    private readonly workerCount = 2,
  ) {}

  /**
   * Watches `res` into a cache; each change enqueues the keys `keysOf` returns (default: the
   * object's own namespace/name).
   */
  protected inform<T extends KubeObject = KubeObject>(res: ResourceRef, keysOf: (o: T) => string[] = (o) => [cacheKey(o)], namespace?: string): Informer<T> {
    const inf = new Informer<T>(listWatchFor<T>(this.client, res, namespace), (e) =>
      this.log(`${this.name}: ${res.plural}: ${e instanceof Error ? e.message : e}`),
    );
    const enqueue = (o: T) => {
      for (const k of keysOf(o)) this.queue.add(k);
    };
    inf.on({ add: enqueue, update: (_o, n) => enqueue(n), delete: enqueue });
    this.informers.push(inf);
    return inf;
  }

  async start(): Promise<void> {
    for (const inf of this.informers) inf.start();
    await Promise.all(this.informers.map((i) => i.waitForSync()));
    await this.started();
    this.workers = runWorkers(
      this.queue,
      this.workerCount,
      (key) => this.reconcile(key),
      (key, err) => {
        this.log(`${this.name}: ${key}: ${err instanceof Error ? err.message : err}`);
      },
    );
  }

  async stop(): Promise<void> {
    for (const inf of this.informers) inf.stop();
    this.queue.shutdown();
    await this.workers;
    await this.stopped();
  }

  /** Hook: after the caches are filled, before the first reconcile. */
  protected async started(): Promise<void> {}
  /** Hook: after the workers have finished. */
  protected async stopped(): Promise<void> {}

  protected abstract reconcile(key: string): Promise<void>;
}

/** "namespace/name" → parts. */
export function splitKey(key: string): { namespace?: string; name: string } {
  const i = key.indexOf('/');
  return i < 0 ? { name: key } : { namespace: key.slice(0, i), name: key.slice(i + 1) };
}
