/**
 * @vessel/client: a small Kubernetes REST client (kubeconfig, requests, watches, discovery)
 * used by the vessel CLI, the controllers and the tests.
 */
export * from './errors.ts';
export * from './types.ts';
export * from './kubeconfig.ts';
export * from './discovery.ts';
export * from './client.ts';
