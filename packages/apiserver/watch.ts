/**
 * `?watch=true`: a chunked stream of `{"type","object"}` lines. Events are filtered by the
 * selectors with Kubernetes' transition rules (an object that starts matching arrives as
 * ADDED, one that stops matching as DELETED); a start below the compacted revision gets a
 * 410 Expired ERROR event, which tells informers to list again.
 */
import type { ServerResponse } from 'node:http';
import type { KindInfo } from '@vessel/api';
import type { Store } from '@vessel/store';
import { isStoreError } from '@vessel/store';
import { badRequest, gone, toApiError } from './errors.ts';
import { apiVersionOf, asVersion, decode, kindPrefix, listPrefix, type StoredObject } from './objects.ts';
import type { DecodedEvent, Subscription, WatchCaches } from './watch-cache.ts';
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

export async function serveWatch(store: Store, caches: WatchCaches, res: ServerResponse, w: WatchRequest): Promise<void> {
  const matches = (o: StoredObject | undefined) => !!o && (!w.labels || w.labels(o)) && (!w.fields || w.fields(o));
  const prefix = listPrefix(w.info, w.namespace);
  const rvParam = w.resourceVersion;
  if (rvParam !== undefined && rvParam !== '' && !/^\d+$/.test(rvParam)) {
    throw badRequest(`invalid resourceVersion "${rvParam}": it must be the metadata.resourceVersion of an earlier read`);
  }
  // "" and "0" mean: start with the current state as ADDED events, then follow.
  const initial = rvParam === undefined || rvParam === '' || rvParam === '0' || w.sendInitialEvents;
  let fromRevision = initial ? 0 : Number(rvParam);
  const initialObjects: StoredObject[] = [];
  if (initial) {
    let revision = rvParam && rvParam !== '0' ? Number(rvParam) : undefined;
    let startAfter: string | undefined;
    for (;;) {
      const page = await store.list(prefix, { revision, startAfter, limit: 1000 });
      revision = page.revision;
      initialObjects.push(...page.items.map(decode).filter(matches));
      if (!page.more || page.items.length === 0) break;
      startAfter = page.items[page.items.length - 1].key;
    }
    fromRevision = revision;
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
    let sub: Subscription | undefined;
    const timers: NodeJS.Timeout[] = [];
    const finish = () => {
      if (finished) return;
      finished = true;
      sub?.close();
      timers.forEach(clearTimeout);
      timers.forEach(clearInterval);
      if (!res.writableEnded) res.end();
      resolve();
    };
    const onEvent = (ev: DecodedEvent) => {
      if (finished) return;
      lastRevision = ev.revision;
      const type = transition(ev, matches);
      if (type && !res.write(cachedLine(w, type, ev))) {
        // A client that reads too slowly gets disconnected rather than buffered without bound.
        if (res.writableLength > 64 * 1024 * 1024) finish();
      }
    };
    const onError = (err: Error) => {
      if (finished) return;
      const status = isStoreError(err, 'Gone') ? gone(`too old resource version: ${fromRevision}`) : toApiError(err);
      writeEvent(res, w, 'ERROR', status.toStatus());
      finish();
    };
    res.on('close', finish);
    caches.subscribe(kindPrefix(w.info), prefix, fromRevision, onEvent, onError).then((s) => {
      if (finished) s.close();
      else sub = s;
    }, onError);
    if (w.allowBookmarks) timers.push(setInterval(() => writeBookmark(res, w, lastRevision), w.bookmarkIntervalMs));
    const timeout = w.timeoutSeconds ?? 1800 + Math.floor(Math.random() * 1800);
    timers.push(setTimeout(finish, timeout * 1000));
  });
}

/** Kubernetes' selector rules: starting to match is ADDED, ceasing to match is DELETED. */
function transition(ev: DecodedEvent, matches: (o: StoredObject | undefined) => boolean): EventType | undefined {
  if (ev.deleted) return matches(ev.prev) ? 'DELETED' : undefined;
  const now = matches(ev.object),
    before = matches(ev.prev);
  if (now && before) return 'MODIFIED';
  if (now) return 'ADDED';
  if (before) return 'DELETED';
  return undefined;
}

/** Serializes an event once per type and format, however many watchers send it. */
function cachedLine(w: WatchRequest, type: EventType, ev: DecodedEvent): string {
  // Per version too: watchers of one kind at two versions share the event, not its text.
  const key = `${w.info.version}:` + (w.table ? `${type}:table:${w.info.plural}:${w.includeObject ?? ''}` : type);
  let text = ev.lines.get(key);
  if (text === undefined) {
    text = line(w, type, ev.object);
    ev.lines.set(key, text);
  }
  return text;
}

function beginStream(res: ServerResponse): void {
  res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache', 'Transfer-Encoding': 'chunked' });
  res.flushHeaders();
}

function line(w: WatchRequest, type: EventType, object: unknown): string {
  const isObject = type === 'ADDED' || type === 'MODIFIED' || type === 'DELETED';
  // Stored objects are at the storage version: each watcher gets the version it watches.
  const versioned = isObject ? asVersion(w.info, object as StoredObject) : object;
  const obj =
    w.table && isObject
      ? toTable(w.info, [versioned as StoredObject], { resourceVersion: (versioned as StoredObject).metadata.resourceVersion }, w.includeObject)
      : versioned;
  return JSON.stringify({ type, object: obj }) + '\n';
}

function writeEvent(res: ServerResponse, w: WatchRequest, type: EventType, object: unknown): void {
  if (!res.writableEnded) res.write(line(w, type, object));
}

function writeBookmark(res: ServerResponse, w: WatchRequest, revision: number, annotations?: Record<string, string>): void {
  writeEvent(res, w, 'BOOKMARK', {
    kind: w.info.kind,
    apiVersion: apiVersionOf(w.info),
    metadata: { resourceVersion: String(revision), ...(annotations ? { annotations } : {}) },
  });
}
