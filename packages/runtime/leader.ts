/**
 * Leader election, so that when several servers share one etcd only one runs the
 * controllers. The lock is a ConfigMap in kube-system whose annotation names the holder and
 * is renewed every few seconds, written with resourceVersion preconditions so two candidates
 * never both win. Like client-go, expiry is judged by when *this* process last saw the record
 * change, not by the holder's clock.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { isNotFound, isStatusError, type Client, type KubeObject, type ResourceRef } from '@vessel/client';

const CONFIGMAPS: ResourceRef = { group: '', version: 'v1', plural: 'configmaps', namespaced: true };
const ANNOTATION = 'control-plane.alpha.kubernetes.io/leader';

export interface LeaderElectionOptions {
  /** Name of the lock ConfigMap in kube-system. */
  name: string;
  identity?: string;
  leaseMs?: number;
  renewMs?: number;
  onStartedLeading: () => Promise<void> | void;
  onStoppedLeading: () => Promise<void> | void;
  log?: (line: string) => void;
}

interface Record {
  holderIdentity: string;
  leaseDurationSeconds: number;
  renewTime: string;
  acquireTime: string;
}

export class LeaderElector {
  readonly identity: string;
  private leading = false;
  private stopped = false;
  private timer?: NodeJS.Timeout;
  private observed?: { raw: string; at: number };
  private readonly leaseMs: number;
  private readonly renewMs: number;

  constructor(
    private readonly client: Client,
    private readonly opts: LeaderElectionOptions,
  ) {
    this.identity = opts.identity ?? `${hostname()}_${randomBytes(4).toString('hex')}`;
    this.leaseMs = opts.leaseMs ?? 15_000;
    this.renewMs = opts.renewMs ?? Math.floor(this.leaseMs / 3);
  }

  get isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    void this.tick();
  }

  /** Stops campaigning; a leader steps down and releases the lock so another takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.leading) {
      this.leading = false;
      await this.opts.onStoppedLeading();
      // Releasing only speeds up the handover: if the write fails, the lease simply expires.
      await this.write(new Date(0).toISOString(), 0).catch(() => undefined);
    }
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    let ok = false;
    try {
      ok = await this.tryAcquireOrRenew();
    } catch (e) {
      this.opts.log?.(`leader election: ${e instanceof Error ? e.message : e}`);
    }
    if (this.stopped) return;
    if (ok && !this.leading) {
      this.leading = true;
      this.opts.log?.(`leader election: ${this.identity} is now the leader`);
      await this.opts.onStartedLeading();
    } else if (!ok && this.leading) {
      this.leading = false;
      this.opts.log?.(`leader election: ${this.identity} lost the lease`);
      await this.opts.onStoppedLeading();
    }
    this.timer = setTimeout(() => void this.tick(), this.leading ? this.renewMs : Math.floor(this.renewMs / 2));
    this.timer.unref();
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    let cm: KubeObject;
    try {
      cm = await this.client.get(CONFIGMAPS, this.opts.name, { namespace: 'kube-system' });
    } catch (e) {
      if (!isNotFound(e)) throw e;
      return this.write(new Date().toISOString(), this.leaseMs / 1000, undefined);
    }
    const raw = cm.metadata?.annotations?.[ANNOTATION] ?? '';
    const now = Date.now();
    if (this.observed?.raw !== raw) this.observed = { raw, at: now };
    const rec = raw ? (JSON.parse(raw) as Record) : undefined;
    const expired = !rec || rec.leaseDurationSeconds === 0 || this.observed.at + rec.leaseDurationSeconds * 1000 < now;
    if (rec && rec.holderIdentity !== this.identity && !expired) return false;
    return this.write(new Date().toISOString(), this.leaseMs / 1000, cm);
  }

  /** Writes the record (create when `current` is undefined); false when another writer got there first. */
  private async write(renewTime: string, leaseDurationSeconds: number, current?: KubeObject): Promise<boolean> {
    const record: Record = { holderIdentity: this.identity, leaseDurationSeconds, renewTime, acquireTime: renewTime };
    try {
      if (!current && leaseDurationSeconds === 0) {
        // Release: only if we still hold it.
        const cm = await this.client.get(CONFIGMAPS, this.opts.name, { namespace: 'kube-system' });
        const rec = JSON.parse(cm.metadata?.annotations?.[ANNOTATION] ?? '{}') as Partial<Record>;
        if (rec.holderIdentity !== this.identity) return false;
        current = cm;
      }
      const metadata = { name: this.opts.name, namespace: 'kube-system', annotations: { [ANNOTATION]: JSON.stringify(record) } };
      if (current)
        await this.client.update(CONFIGMAPS, {
          ...current,
          metadata: { ...current.metadata, annotations: { ...current.metadata?.annotations, ...metadata.annotations } },
        });
      else await this.client.create(CONFIGMAPS, { apiVersion: 'v1', kind: 'ConfigMap', metadata });
      return true;
    } catch (e) {
      if (isStatusError(e) && e.code === 409) return false;
      throw e;
    }
  }
}
