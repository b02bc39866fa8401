/**
 * @vessel/runtime: the small controller runtime the control plane (@vessel/controllers) and
 * the node agent (@vessel/agent) share: informers with indexes over list+watch, a work queue
 * with client-go's guarantees, leader election, the Controller base class, and helpers that
 * write status and Events. It knows the API only through @vessel/client and @vessel/api.
 */
export { Informer, cacheKey, type ListWatch, type InformerHandlers, type IndexFunc, type KubeObject, type Typed } from './informer.ts';
export { BY_NAMESPACE, BY_NODE, BY_CLAIM, BY_OWNER, BY_DATASOURCE_CLAIM, byNamespace, byNode, byClaim, byOwner, byDataSourceClaim } from './indexes.ts';
export { WorkQueue, runWorkers } from './workqueue.ts';
export { listWatchFor } from './listwatch.ts';
export { LeaderElector, type LeaderElectionOptions } from './leader.ts';
export { Controller, splitKey, type Log } from './controller.ts';
export { EventRecorder, type EventType } from './events.ts';
export { updateStatus, setCondition, getCondition, type Status } from './status.ts';
