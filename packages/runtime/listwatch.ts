/** Informer plumbing over @vessel/client: list and watch one resource through the API server. */
import type { Client, ResourceRef } from '@vessel/client';
import type { KubeObject, ListWatch } from './informer.ts';

/** `T` is what the caller knows `res` holds: the server is trusted to send objects of that kind. */
export function listWatchFor<T extends KubeObject = KubeObject>(client: Client, res: ResourceRef, namespace?: string): ListWatch<T> {
  return {
    async list() {
      const l = await client.list(res, { namespace });
      return { items: l.items as T[], resourceVersion: l.metadata?.resourceVersion ?? '' };
    },
    watch(resourceVersion, onEvent, onEnd) {
      const w = client.watchResource(res, { namespace, resourceVersion, allowWatchBookmarks: true }, (ev) => onEvent(ev.type, ev.object as T));
      w.done.then(
        () => onEnd(),
        (e: Error) => onEnd(e),
      );
      return w;
    },
  };
}
