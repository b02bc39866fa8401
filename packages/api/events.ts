/**
 * The Event object (core/v1) that explains something about another object: built in one place
 * for the controllers' recorder and for the API server's own admission Events.
 */
import { randomBytes } from 'node:crypto';
import type { KubeObject } from './types.ts';

export type EventType = 'Normal' | 'Warning';

/** A new Event about `obj` (count 1, both timestamps now), named as Kubernetes' recorder names them. */
export function newEvent(obj: KubeObject, type: EventType, reason: string, message: string, source: { component: string; host?: string }): KubeObject {
  const namespace = obj.metadata?.namespace ?? 'default';
  const now = new Date().toISOString();
  return {
    apiVersion: 'v1',
    kind: 'Event',
    metadata: { name: `${obj.metadata?.name ?? 'object'}.${Date.now().toString(16)}${randomBytes(2).toString('hex')}`, namespace },
    involvedObject: {
      apiVersion: obj.apiVersion,
      kind: obj.kind,
      name: obj.metadata?.name,
      namespace: obj.metadata?.namespace,
      uid: obj.metadata?.uid,
      resourceVersion: obj.metadata?.resourceVersion,
    },
    reason,
    message,
    type,
    count: 1,
    firstTimestamp: now,
    lastTimestamp: now,
    source: { component: source.component, ...(source.host ? { host: source.host } : {}) },
    reportingComponent: source.component,
    reportingInstance: source.host ?? '',
  };
}
