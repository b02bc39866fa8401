/**
 * @vessel/controllers: the control loops of the server, built on one small runtime
 * (runtime/: informer, work queue). Each controller is one file.
 */
import type { Client } from '@vessel/client';
import { GarbageCollector } from './gc.ts';
import { NamespaceController } from './namespace.ts';

export { Informer, cacheKey, type ListWatch, type InformerHandlers } from './runtime/informer.ts';
export { WorkQueue, runWorkers } from './runtime/workqueue.ts';
export { listWatchFor } from './runtime/listwatch.ts';
export { GarbageCollector } from './gc.ts';
export { NamespaceController } from './namespace.ts';

export interface RunningControllers { stop(): Promise<void> }

/** Starts every controller against the API server `client` talks to. */
export async function startControllers(client: Client, log?: (line: string) => void): Promise<RunningControllers> {
  const controllers = [new GarbageCollector(client, log), new NamespaceController(client, log)];
  await Promise.all(controllers.map((c) => c.start()));
  return { async stop() { await Promise.all(controllers.map((c) => c.stop())); } };
}
