/**
 * Events: how controllers and agents explain themselves (`vessel describe`, `kubectl get
 * events`). Repeats of the same reason and message about the same object bump `count` on one
 * Event instead of adding another, as Kubernetes' recorder does.
 */
import { newEvent, type EventType } from '@vessel/api';
import { isStatusError, type Client, type ResourceRef } from '@vessel/client';
import type { KubeObject } from './informer.ts';

const EVENTS: ResourceRef = { group: '', version: 'v1', plural: 'events', namespaced: true };

export type { EventType };

export class EventRecorder {
  /** key (object uid + reason + message) -> the Event's name and count, to aggregate repeats. */
  private readonly seen = new Map<string, { name: string; count: number }>();

  constructor(
    private readonly client: Client,
    private readonly component: string,
    private readonly host?: string,
  ) {}

  /** Records an Event; failures are swallowed (an Event is never worth failing a reconcile for). */
  async record(obj: KubeObject, type: EventType, reason: string, message: string): Promise<void> {
    const namespace = obj.metadata.namespace ?? 'default';
    const key = `${obj.metadata.uid}/${reason}/${message}`;
    const now = new Date().toISOString();
    const prior = this.seen.get(key);
    try {
      if (prior) {
        prior.count++;
        await this.client.patch(EVENTS, prior.name, { count: prior.count, lastTimestamp: now }, { namespace });
        return;
      }
      const event = newEvent(obj, type, reason, message, { component: this.component, host: this.host });
      const name = event.metadata!.name!;
      await this.client.create(EVENTS, event, { namespace });
      if (this.seen.size > 10_000) this.seen.clear();
      this.seen.set(key, { name, count: 1 });
    } catch (e) {
      if (prior && isStatusError(e, 'NotFound')) this.seen.delete(key);
    }
  }
}
