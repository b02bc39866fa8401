/** Informer plumbing over @vessel/client: list and watch one resource through the API server. */
import type { Client, ResourceRef } from '@vessel/client';
import type { KubeObject, ListWatch } from './informer.ts';

export function listWatchFor(client: Client, res: ResourceRef, namespace?: string): ListWatch {
  return {
    async list() {
      const l = await client.list(res, { namespace });
      return { items: l.items as KubeObject[], resourceVersion: l.metadata?.resourceVersion ?? '' };
    },
    watch(resourceVersion, onEvent, onEnd) {
      const w = client.watchResource(res, { namespace, resourceVersion, allowWatchBookmarks: true },
        (ev) => onEvent(ev.type, ev.object as KubeObject));
      w.done.then(() => onEnd(), (e: Error) => onEnd(e));
      return w;
    },
  };
}
