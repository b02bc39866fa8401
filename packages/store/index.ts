/**
 * @vessel/store: the key-value store behind the API server.
 * One interface (types.ts), two backends (sqlite/, etcd/), one conformance suite.
 */
export type * from './types.ts';
export * from './errors.ts';
export { SqliteStore, type SqliteStoreOptions } from './sqlite/sqlite-store.ts';
export { EtcdStore, type EtcdStoreOptions } from './etcd/etcd-store.ts';
export { openStore, type StoreConfig } from './open.ts';
export { startCompactor, type Compactor, type CompactorOptions } from './compactor.ts';
