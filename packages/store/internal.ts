/**
 * Helpers shared by the backends: key-range arithmetic and in-order asynchronous watch
 * delivery. Not exported from index.ts.
 */
import { StoreError } from './errors.ts';
import type { WatchEvent, WatchOptions } from './types.ts';

/**
 * The smallest string greater than every string starting with `prefix`, in code-point order
 * (which is UTF-8 byte order, the order SQLite's BINARY collation and etcd use), or
 * undefined when no such bound exists (empty prefix, or only U+10FFFF characters).
 * Incrementing the last code point keeps the bound valid UTF-8, so it can be bound as TEXT.
 */
export function prefixEnd(prefix: string): string | undefined {
  const cps = Array.from(prefix, (c) => c.codePointAt(0) as number);
  while (cps.length > 0) {
    let last = (cps.pop() as number) + 1;
    if (last === 0xd800) last = 0xe000; // skip surrogates: they never appear alone in valid text
    if (last <= 0x10ffff) return String.fromCodePoint(...cps, last);
  }
  return undefined;
}

/** Byte-wise prefix end, as etcd computes it; a single 0 byte means "to the end of the keyspace". */
export function prefixEndBytes(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

/** Events delivered per macrotask before yielding, so one busy watch can't starve I/O. */
const DELIVERY_BATCH = 500;

/**
 * An ordered, asynchronous event queue for one watch. Writers only push (cheap, never calls
 * user code); the consumer's onEvent runs later from setImmediate, in push order. A backend
 * may supply `refill`, called whenever the queue runs dry, to pull more events (SQLite reads
 * its log this way while catching up). A throwing onEvent fails the watch with that error.
 */
export class WatchDelivery {
  private queue: WatchEvent[] = [];
  private head = 0;
  private scheduled = false;
  private held = false;
  private done = false;
  /** Whether refill() may have more to give without a push (it said so, or kick() asked). */
  private wantRefill = false;

  constructor(
    private readonly options: Pick<WatchOptions, 'onEvent' | 'onError'>,
    /** Called once the watch is closed or failed (to unregister it from its store). */
    private readonly onFinish: () => void,
    /**
     * Called when the queue is empty; may push events. Returns true while it has more to
     * read (so the pump keeps going without a push). Throwing fails the watch.
     */
    private readonly refill?: () => boolean,
  ) {}

  get closed(): boolean {
    return this.done;
  }

  /** Events queued but not yet handed to onEvent. */
  get pending(): number {
    return this.queue.length - this.head;
  }

  push(event: WatchEvent): void {
    if (this.done) return;
    this.queue.push(event);
    this.schedule();
  }

  /** Discards every queued, undelivered event (the backend will re-read them). */
  drop(): void {
    this.queue = [];
    this.head = 0;
  }

  /** Stops delivery (events still queue) until release(): used while a precondition is checked. */
  hold(): void {
    this.held = true;
  }

  release(): void {
    this.held = false;
    this.schedule();
  }

  /** Wakes the pump so refill() runs even though nothing was pushed. */
  kick(): void {
    this.wantRefill = true;
    this.schedule();
  }

  /** Ends the watch with an error: onError runs once, asynchronously, and no event follows. */
  fail(err: Error): void {
    if (this.done) return;
    this.finish();
    queueMicrotask(() => this.options.onError(err));
  }

  /** Ends the watch silently (the consumer asked for it). */
  close(): void {
    if (this.done) return;
    this.finish();
  }

  private finish(): void {
    this.done = true;
    this.drop();
    this.onFinish();
  }

  private schedule(): void {
    if (this.scheduled || this.done || this.held) return;
    this.scheduled = true;
    setImmediate(() => this.pump());
  }

  private pump(): void {
    // `scheduled` stays true while pumping, so pushes made from inside onEvent don't
    // schedule a second pump; the loop below picks them up.
    for (let n = 0; n < DELIVERY_BATCH && !this.done && !this.held; n++) {
      if (this.head === this.queue.length) {
        this.drop();
        if (!this.refill) break;
        try {
          this.wantRefill = this.refill();
        } catch (err) {
          this.fail(asError(err));
          break;
        }
        if (this.head === this.queue.length) {
          if (this.wantRefill) continue;
          break;
        }
      }
      const event = this.queue[this.head++];
      try {
        this.options.onEvent(event);
      } catch (err) {
        this.fail(asError(err));
        break;
      }
    }
    this.scheduled = false;
    if (!this.done && !this.held && (this.pending > 0 || (this.refill && this.wantRefill))) this.schedule();
  }
}

export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

export function closedError(): StoreError {
  return new StoreError('Unavailable', 'the store is closed');
}
