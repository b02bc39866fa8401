/**
 * Child process for the SQLite durability test: writes as fast as it can and prints
 * "<key> <revision>" for every write only after the write has returned. The parent
 * SIGKILLs it and checks that every printed write survived.
 */
import { SqliteStore } from './sqlite-store.ts';

const path = process.argv[2];
if (!path) throw new Error('usage: durability-child.ts <db-path>');
const store = new SqliteStore(path);
let counter = await store.create('/d/counter', '0');
for (let i = 0; ; i++) {
  const key = `/d/${i}`;
  const kv = await store.create(key, `value-${i}-${'x'.repeat(200)}`);
  // stdout is a pipe: writes are synchronous on Linux, so an ack printed here reaches the
  // parent even if we are killed right after.
  process.stdout.write(`${key} ${kv.modRevision}\n`);
  if (i % 10 === 0) {
    counter = await store.update('/d/counter', String(i), counter.modRevision);
    process.stdout.write(`/d/counter ${counter.modRevision} ${i}\n`);
  }
}
