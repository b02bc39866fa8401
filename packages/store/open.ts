/** openStore: picks a backend from configuration (the API server's --store flags). */
import { EtcdStore } from './etcd/etcd-store.ts';
import { SqliteStore } from './sqlite/sqlite-store.ts';
import type { Store } from './types.ts';

export type StoreConfig = { kind: 'sqlite'; path: string } | { kind: 'etcd'; endpoints: string[]; prefix?: string };

export async function openStore(config: StoreConfig): Promise<Store> {
  switch (config.kind) {
    case 'sqlite':
      return new SqliteStore(config.path);
    case 'etcd': {
      const store = new EtcdStore({ endpoints: config.endpoints, prefix: config.prefix });
      // Fail at startup, not on the first request, when etcd is unreachable.
      try {
        await store.currentRevision();
      } catch (err) {
        await store.close();
        throw err;
      }
      return store;
    }
  }
}
