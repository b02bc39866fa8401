/**
 * `?watch=true`: a chunked stream of `{"type","object"}` lines. Events are filtered by the
 * selectors with Kubernetes' transition rules (an object that starts matching arrives as
 * ADDED, one that stops matching as DELETED); a start below the compacted revision gets a
 * 410 Expired ERROR event, which tells informers to list again.
 */
import type { ServerResponse } from 'node:http';
import type { KindInfo } from '@vessel/api';
import type { Store, WatchEvent } from '@vessel/store';
import { isStoreError } from '@vessel/store';
import { badRequest, gone, toApiError } from './errors.ts';
import { apiVersionOf, decode, listPrefix, type StoredObject } from './objects.ts';
import type { Matcher } from './selectors.ts';
import { toTable } from './table.ts';

export interface WatchRequest {
  info: KindInfo;
  namespace?: string;
  resourceVersion?: string;
  labels?: Matcher;
  fields?: Matcher;
  allowBookmarks: boolean;
  sendInitialEvents: boolean;
  timeoutSeconds?: number;
  table: boolean;
  includeObject?: string;
  bookmarkIntervalMs: number;
}

type EventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';

export async function serveWatch(store: Store, res: ServerResponse, w: WatchRequest): Promise<void> {
  const matches = (o: StoredObject | undefined) => !!o && (!w.labels || w.labels(o)) && (!w.fields || w.fields(o));
  const prefix = listPrefix(w.info, w.namespace);
  const rvParam = w.resourceVersion;
  if (rvParam !== undefined && rvParam !== '' && !/^\d+$/.test(rvParam)) {
    throw badRequest(`invalid resourceVersion "${rvParam}": it must be the metadata.resourceVersion of an earlier read`);
  }
  // "" and "0" mean: start with the current state as ADDED events, then follow.
  const initial = rvParam === undefined || rvParam === '' || rvParam === '0' || w.sendInitialEvents;
  let fromRevision = initial ? 0 : Number(rvParam);
  let initialObjects: StoredObject[] = [];
  if (initial) {
    const listed = await store.list(prefix, rvParam && rvParam !== '0' ? { revision: Number(rvParam) } : {});
    initialObjects = listed.items.map(decode).filter(matches);
    fromRevision = listed.revision;
  } else if (fromRevision < (await store.compactedRevision())) {
    // Answer like Kubernetes: a 200 stream whose only event is the 410.
    beginStream(res);
    writeEvent(res, w, 'ERROR', gone(`too old resource version: ${fromRevision} (${await store.compactedRevision()})`).toStatus());
    res.end();
    return;
  }
  beginStream(res);
  let lastRevision = fromRevision;
  for (const o of initialObjects) writeEvent(res, w, 'ADDED', o);
  if (w.sendInitialEvents && w.allowBookmarks) {
    writeBookmark(res, w, lastRevision, { 'k8s.io/initial-events-end': 'true' });
  }

  await new Promise<void>((resolve) => {
    let finished = false;
    const timers: NodeJS.Timeout[] = [];
    const finish = () => {
      if (finished) return;
      finished = true;
      watch.close();
      timers.forEach(clearTimeout);
      timers.forEach(clearInterval);
      if (!res.writableEnded) res.end();
      resolve();
    };
    const watch = store.watch(prefix, {
      fromRevision,
      onEvent: (ev: WatchEvent) => {
        if (finished) return;
        lastRevision = ev.kv.modRevision;
        const out = translate(ev, matches);
        if (out && !res.write(line(w, out.type, out.object))) {
          // A client that reads too slowly gets disconnected rather than buffered without bound.
          if (res.writableLength > 64 * 1024 * 1024) finish();
        }
      },
      onError: (err: Error) => {
        if (finished) return;
        const status = isStoreError(err, 'Gone') ? gone(`too old resource version: ${fromRevision}`) : toApiError(err);
        writeEvent(res, w, 'ERROR', status.toStatus());
        finish();
      },
    });
    res.on('close', finish);
    if (w.allowBookmarks) timers.push(setInterval(() => writeBookmark(res, w, lastRevision), w.bookmarkIntervalMs));
    const timeout = w.timeoutSeconds ?? 1800 + Math.floor(Math.random() * 1800);
    timers.push(setTimeout(finish, timeout * 1000));
  });
}

function translate(ev: WatchEvent, matches: (o: StoredObject | undefined) => boolean): { type: EventType; object: StoredObject } | undefined {
  const prev = ev.prev ? decode(ev.prev) : undefined;
  if (ev.type === 'delete') {
    if (!prev || !matches(prev)) return undefined;
    prev.metadata.resourceVersion = String(ev.kv.modRevision);
    return { type: 'DELETED', object: prev };
  }
  const obj = decode(ev.kv);
  const now = matches(obj), before = matches(prev);
  if (now && before) return { type: 'MODIFIED', object: obj };
  if (now) return { type: 'ADDED', object: obj };
  if (before) return { type: 'DELETED', object: obj };
  return undefined;
}

function beginStream(res: ServerResponse): void {
  res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache', 'Transfer-Encoding': 'chunked' });
  res.flushHeaders();
}

function line(w: WatchRequest, type: EventType, object: unknown): string {
  const obj = w.table && (type === 'ADDED' || type === 'MODIFIED' || type === 'DELETED')
    ? toTable(w.info, [object as StoredObject], { resourceVersion: (object as StoredObject).metadata.resourceVersion }, w.includeObject)
    : object;
  return JSON.stringify({ type, object: obj }) + '\n';
}

function writeEvent(res: ServerResponse, w: WatchRequest, type: EventType, object: unknown): void {
  if (!res.writableEnded) res.write(line(w, type, object));
}

function writeBookmark(res: ServerResponse, w: WatchRequest, revision: number, annotations?: Record<string, string>): void {
  writeEvent(res, w, 'BOOKMARK', {
    kind: w.info.kind, apiVersion: apiVersionOf(w.info),
    metadata: { resourceVersion: String(revision), ...(annotations ? { annotations } : {}) },
  });
}
