/**
 * An agent's migration CA and the leaf it signs, renewed before they expire, as KubeVirt rotates
 * its certificates (CA 7 days, leaf 24 h, each renewed once 80% of its lifetime has passed).
 * The CA bundle peers trust (the Node's `vessel.io/migration-ca`) changes in an order that lets
 * no migration fail: a new CA is published beside the current one and signs nothing until peers
 * could have read it (the overlap); then the leaf switches to it; the old CA leaves the bundle
 * only once no leaf it signed can still be presented (docs/migration.md "TLS on the migration
 * stream"). Certificates are made with the openssl command (`openssl ca`, for validity to the
 * second, which `req -days` cannot give); the decision of what to do when is `rotationStep`,
 * pure, so it is tested with a fake clock.
 */
import { execFile } from 'node:child_process';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface MigrationCerts {
  /** The CA bundle: every migration CA of this node peers must trust now (published on its Node). */
  caPem: string;
  certPem: string;
  keyPem: string;
}

export interface MigrationCertLifetimes {
  /** The CA's lifetime (KubeVirt's default: 7 days). */
  caMs: number;
  /** The leaf's (KubeVirt's default: 24 h). */
  leafMs: number;
  /** The share of a lifetime after which a certificate is renewed (KubeVirt's: renewBefore 20%, so 0.8). */
  renewAt: number;
  /**
   * How long a new CA is published before the leaf switches to it, and the least time the old CA
   * stays published after the switch. A target loads the source's bundle before the source
   * loads its leaf, seconds apart: the overlap must be longer than that.
   */
  overlapMs: number;
  /** The longest wait between two checks, also with nothing due (the clock may jump). */
  checkMs: number;
}

export const DEFAULT_MIGRATION_CERT_LIFETIMES: MigrationCertLifetimes = {
  caMs: 7 * 24 * 3600_000,
  leafMs: 24 * 3600_000,
  renewAt: 0.8,
  overlapMs: 10 * 60_000,
  checkMs: 3600_000,
};

/** Lifetimes with `given` over the defaults; refuses a combination under which a rotation cannot finish before the CA expires. */
export function migrationCertLifetimes(given: Partial<MigrationCertLifetimes> = {}): MigrationCertLifetimes {
  const l = { ...DEFAULT_MIGRATION_CERT_LIFETIMES, ...Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined)) };
  for (const [k, v] of Object.entries(l)) if (!Number.isFinite(v) || v <= 0) throw new Error(`migration certificate ${k} must be a positive number, not ${v}`);
  if (l.renewAt >= 1) throw new Error(`migration certificate renewAt must be below 1, not ${l.renewAt}`);
  if (l.caMs < 2000 || l.leafMs < 2000) throw new Error('migration certificates must live at least 2 s (validity is counted in seconds)');
  // The old CA must outlive the publication before the switch and the overlap after it.
  if (2 * l.overlapMs >= (1 - l.renewAt) * l.caMs)
    throw new Error(
      `the migration CA overlap (${l.overlapMs} ms) must be under half of the CA's last ${Math.round((1 - l.renewAt) * 100)}% (${(1 - l.renewAt) * l.caMs} ms)`,
    );
  return l;
}

/** When a certificate is valid, in ms since the epoch. */
export interface CertWindow {
  notBefore: number;
  notAfter: number;
}

/** What the rotation needs to know of the files, as `rotationStep` reads it. */
export interface RotationState {
  /** The CA that signs the leaf; absent when missing or unreadable. */
  ca?: CertWindow;
  /** `current`: signed by `ca`, names the node and matches its key. */
  leaf?: CertWindow & { current: boolean };
  /** A newer CA in the bundle that signs nothing yet; `publishedAt` once peers can read it. */
  next?: CertWindow & { publishedAt?: number };
  /** An older CA still in the bundle, until `dropAfter`. */
  old?: { dropAfter: number };
}

export type RotationStep =
  /** No usable CA (missing, expired, not yet valid): a new CA and leaf at once, nothing to overlap with. */
  | 'fresh'
  /** The old CA leaves the bundle. */
  | 'drop-old'
  /** The next CA is published (the Node's bundle gets it). */
  | 'publish'
  /** The next CA becomes the signing one, the current one old, and a new leaf is signed. */
  | 'switch'
  /** A next CA is made (then published). */
  | 'make-next'
  /** A new leaf from the current CA. */
  | 'leaf';

const valid = (w: CertWindow, now: number) => w.notBefore <= now && now < w.notAfter;
/** When `w` is due for renewal: at `renewAt` of its lifetime, at once if it lives longer than `maxMs` (a lifetime was shortened). */
const dueAt = (w: CertWindow, life: MigrationCertLifetimes, maxMs: number) =>
  w.notAfter - w.notBefore > maxMs + 1000 ? w.notBefore : w.notBefore + life.renewAt * (w.notAfter - w.notBefore);

/**
 * The step due at `now` (then the caller looks again), or none and when to look next (`at`).
 * Steps come in the order that keeps every migration verifiable: see the module comment.
 */
export function rotationStep(s: RotationState, now: number, life: MigrationCertLifetimes): { step?: RotationStep; at: number } {
  const { ca, leaf, next, old } = s;
  if (!ca || !valid(ca, now)) return { step: next?.publishedAt !== undefined && valid(next, now) ? 'switch' : 'fresh', at: now };
  if (old && now >= old.dropAfter) return { step: 'drop-old', at: now };
  if (next && next.publishedAt === undefined) return { step: 'publish', at: now };
  if (next && (now >= next.publishedAt! + life.overlapMs || !valid(next, now))) return { step: valid(next, now) ? 'switch' : 'fresh', at: now };
  const caDue = dueAt(ca, life, life.caMs);
  if (!next && now >= caDue) return { step: 'make-next', at: now };
  if (!leaf || !leaf.current || !valid(leaf, now)) return { step: 'leaf', at: now };
  const leafDue = Math.min(dueAt(leaf, life, life.leafMs), leaf.notAfter);
  if (now >= leafDue) return { step: 'leaf', at: now };
  const times = [leafDue, ca.notAfter, next ? next.publishedAt! + life.overlapMs : caDue, old?.dropAfter ?? Infinity, now + life.checkMs];
  return { at: Math.min(...times) };
}

async function openssl(args: string[], cwd?: string): Promise<void> {
  try {
    await run('openssl', args, { cwd });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new Error('openssl is not installed: run `apt-get install -y openssl`');
    throw new Error(`openssl ${args[0]} failed: ${err.stderr ?? err.message}`);
  }
}

/** openssl ca's time format (GeneralizedTime, UTC, to the second). */
const asn1Time = (ms: number) => `${new Date(ms).toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`;

const CERT_RE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g;
const KEY_RE = /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----\n?/;

/** A certificate and its key, kept in one file so that a rename replaces both at once. */
interface Pair {
  certPem: string;
  keyPem: string;
  cert: X509Certificate;
}

function parsePair(text: string): Pair | undefined {
  try {
    const certPem = text.match(CERT_RE)?.[0],
      keyPem = text.match(KEY_RE)?.[0];
    if (!certPem || !keyPem) return undefined;
    const cert = new X509Certificate(certPem);
    // A key that is not the certificate's (a file half written by hand): unusable.
    const pub = createPublicKey(createPrivateKey(keyPem)).export({ type: 'spki', format: 'der' });
    if (!pub.equals(cert.publicKey.export({ type: 'spki', format: 'der' }))) return undefined;
    return { certPem, keyPem, cert };
  } catch {
    return undefined;
  }
}

const windowOf = (c: X509Certificate): CertWindow => ({ notBefore: Date.parse(c.validFrom), notAfter: Date.parse(c.validTo) });

export interface MigrationCaOptions {
  /** `<dataDir>/migration-ca`: ca.pem, node.pem, next-ca.pem, old-ca.crt, state.json. */
  dir: string;
  nodeName: string;
  lifetimes?: Partial<MigrationCertLifetimes>;
  /** Puts the bundle where peers read it (the Node annotation); resolves once it is there. */
  publish?: (bundlePem: string) => Promise<void>;
  log?: (line: string) => void;
  /** The clock (tests). */
  now?: () => number;
}

interface SavedState {
  /** When the next CA was published (ms). */
  nextPublishedAt?: number;
  /** When the old CA may leave the bundle (ms). */
  oldDropAfter?: number;
}

/**
 * The migration CA of one node and its leaf, on disk in `dir`, rotated by `check` (at start and
 * then on a timer, `start`). `current()` is what a new migration's credentials are written from.
 */
export class MigrationCa {
  readonly lifetimes: MigrationCertLifetimes;
  private ca?: Pair;
  private leaf?: Pair;
  private next?: Pair;
  private old?: X509Certificate;
  private saved: SavedState = {};
  /** The bundle changed since it was last published. */
  private unpublished = false;
  private timer?: NodeJS.Timeout;
  private stopped = true;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(private readonly opts: MigrationCaOptions) {
    this.lifetimes = migrationCertLifetimes(opts.lifetimes);
  }

  /**
   * Reads `dir` and does every step due that needs no publishing (a missing, expired or
   * not-yet-valid certificate is made again, never an error), so `current()` is usable.
   */
  static async open(opts: MigrationCaOptions): Promise<MigrationCa> {
    const m = new MigrationCa(opts);
    await mkdir(opts.dir, { recursive: true, mode: 0o700 });
    await m.load();
    await m.run(false);
    return m;
  }

  private now(): number {
    return this.opts.now?.() ?? Date.now();
  }

  /** The CA bundle (old, current, next: those present) and the leaf. */
  current(): MigrationCerts {
    if (!this.ca || !this.leaf) throw new Error('the migration CA is not loaded');
    return { caPem: this.bundle(), certPem: this.leaf.certPem, keyPem: this.leaf.keyPem };
  }

  bundle(): string {
    const pems = [this.old?.toString(), this.ca?.certPem, this.next?.certPem].filter((p): p is string => !!p);
    return pems.map((p) => (p.endsWith('\n') ? p : `${p}\n`)).join('');
  }

  /** What `rotationStep` decides from. */
  state(): RotationState {
    const ca = this.ca && windowOf(this.ca.cert);
    const leaf = this.leaf && {
      ...windowOf(this.leaf.cert),
      current:
        !!this.ca &&
        this.leaf.cert.checkIssued(this.ca.cert) &&
        this.leaf.cert.verify(this.ca.cert.publicKey) &&
        this.leaf.cert.checkHost(this.opts.nodeName) !== undefined,
    };
    const next = this.next && { ...windowOf(this.next.cert), publishedAt: this.saved.nextPublishedAt };
    const old = this.old && { dropAfter: this.saved.oldDropAfter ?? 0 };
    return { ca, leaf, next, old };
  }

  /** Checks now and then whenever something falls due (at least every `checkMs`). */
  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  /** Resolves once a check under way has ended: its files are written whole before the caller removes or reuses the directory. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.queue;
  }

  /** Does every step due now (publishing included); resolves when none is left. */
  check(): Promise<void> {
    const p = this.queue.then(() => this.run(true));
    this.queue = p.catch(() => undefined);
    return p;
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.check().then(
        () => this.schedule(Math.max(0, rotationStep(this.state(), this.now(), this.lifetimes).at - this.now())),
        (e: Error) => {
          // The API server away, openssl failing: try again soon, the old state still works.
          this.opts.log?.(`migration-ca: ${e.message}; trying again in 10 s`);
          this.schedule(Math.min(10_000, this.lifetimes.checkMs));
        },
      );
    }, ms);
    this.timer.unref();
  }

  private async run(publishing: boolean): Promise<void> {
    for (let i = 0; i < 10; i++) {
      if (publishing && this.unpublished && this.opts.publish) {
        await this.opts.publish(this.bundle());
        this.unpublished = false;
      }
      const s = this.state();
      // At start the Node is registered with the whole bundle after this: a next CA counts as
      // published from now (recorded by the first check once the Node has it).
      if (!publishing && s.next && s.next.publishedAt === undefined) s.next.publishedAt = this.now();
      const { step } = rotationStep(s, this.now(), this.lifetimes);
      if (!step) return;
      await this.apply(step, publishing);
    }
    throw new Error('the migration CA rotation did not settle in 10 steps');
  }

  private async apply(step: RotationStep, publishing: boolean): Promise<void> {
    const now = this.now();
    const log = (what: string) => this.opts.log?.(`migration-ca: ${what}`);
    switch (step) {
      case 'fresh':
        this.ca = await this.makeCa('ca.pem');
        this.next = undefined;
        this.old = undefined;
        await rm(join(this.opts.dir, 'next-ca.pem'), { force: true });
        await rm(join(this.opts.dir, 'old-ca.crt'), { force: true });
        this.saved = {};
        await this.save();
        this.leaf = await this.makeLeaf();
        this.unpublished = true;
        log(`a new CA (none usable was found), valid until ${this.ca.cert.validTo}`);
        return;
      case 'drop-old':
        this.old = undefined;
        await rm(join(this.opts.dir, 'old-ca.crt'), { force: true });
        this.saved.oldDropAfter = undefined;
        await this.save();
        this.unpublished = true;
        log('the old CA left the bundle');
        return;
      case 'make-next':
        this.next = await this.makeCa('next-ca.pem');
        this.saved.nextPublishedAt = undefined;
        await this.save();
        // Published by the next step (or, at start, with the Node's registration, then recorded).
        log(`a next CA, valid until ${this.next.cert.validTo}; published before it signs`);
        return;
      case 'publish':
        if (publishing && this.opts.publish) await this.opts.publish(this.bundle());
        this.unpublished = false;
        this.saved.nextPublishedAt = now;
        await this.save();
        log(`the bundle with the next CA is published; the leaf switches to it in ${this.lifetimes.overlapMs} ms`);
        return;
      case 'switch': {
        const previous = this.ca,
          previousLeaf = this.leaf;
        // The old CA stays until its last leaf cannot be presented any more, and at least an overlap.
        const dropAfter = Math.max(now + this.lifetimes.overlapMs, previousLeaf ? windowOf(previousLeaf.cert).notAfter : 0);
        if (previous && valid(windowOf(previous.cert), now)) {
          await atomicWrite(join(this.opts.dir, 'old-ca.crt'), previous.certPem);
          this.old = previous.cert;
          this.saved.oldDropAfter = dropAfter;
        }
        this.ca = this.next;
        this.next = undefined;
        this.saved.nextPublishedAt = undefined;
        await this.save();
        await rename(join(this.opts.dir, 'next-ca.pem'), join(this.opts.dir, 'ca.pem'));
        this.leaf = await this.makeLeaf();
        this.unpublished = true;
        log(`the leaf is signed by the new CA; the old one leaves the bundle after ${new Date(dropAfter).toISOString()}`);
        return;
      }
      case 'leaf':
        this.leaf = await this.makeLeaf();
        log(`a new leaf, valid until ${this.leaf.cert.validTo}`);
        return;
    }
  }

  private async load(): Promise<void> {
    const dir = this.opts.dir;
    const read = (name: string) => readFile(join(dir, name), 'utf8').catch(() => undefined);
    let caText = await read('ca.pem');
    // Written before rotation existed: ca.crt and ca.key, kept for ever. Taken as the current
    // CA (so peers' bundles stay right) and rotated like any other (its lifetime is too long).
    if (caText === undefined && existsSync(join(dir, 'ca.crt')) && existsSync(join(dir, 'ca.key'))) {
      caText = (await read('ca.crt'))! + (await read('ca.key'))!;
      if (parsePair(caText)) await atomicWrite(join(dir, 'ca.pem'), caText);
    }
    this.ca = caText === undefined ? undefined : parsePair(caText);
    const leafText = await read('node.pem');
    this.leaf = leafText === undefined ? undefined : parsePair(leafText);
    const nextText = await read('next-ca.pem');
    this.next = nextText === undefined ? undefined : parsePair(nextText);
    const oldText = await read('old-ca.crt');
    try {
      this.old = oldText ? new X509Certificate(oldText) : undefined;
    } catch {
      this.old = undefined;
    }
    try {
      this.saved = JSON.parse((await read('state.json')) ?? '{}') as SavedState;
    } catch {
      this.saved = {};
    }
  }

  private save(): Promise<void> {
    return atomicWrite(join(this.opts.dir, 'state.json'), JSON.stringify(this.saved));
  }

  /** A self-signed CA valid from now for caMs, written to `name` (cert and key in one file). */
  private async makeCa(name: string): Promise<Pair> {
    const now = this.now();
    // A serial-like OU per CA: two CAs of a node never share a subject (the issuer lookup in a bundle).
    const subj = `/OU=${now}/CN=vessel-migration-ca:${this.opts.nodeName}`;
    const text = await this.sign({ subj, start: now, end: now + this.lifetimes.caMs, ext: CA_EXT });
    await atomicWrite(join(this.opts.dir, name), text);
    return parsePair(text)!;
  }

  /** A leaf from the current CA, valid leafMs but never past the CA, written to node.pem. */
  private async makeLeaf(): Promise<Pair> {
    if (!this.ca) throw new Error('no migration CA to sign the leaf');
    const now = this.now();
    const end = Math.min(now + this.lifetimes.leafMs, windowOf(this.ca.cert).notAfter);
    const text = await this.sign({ subj: `/CN=${this.opts.nodeName}`, start: now, end, ext: leafExt(this.opts.nodeName), issuer: this.ca });
    await atomicWrite(join(this.opts.dir, 'node.pem'), text);
    return parsePair(text)!;
  }

  /** A new P-256 key and a certificate for it (self-signed without `issuer`), as one PEM text. */
  private async sign(o: { subj: string; start: number; end: number; ext: string; issuer?: Pair }): Promise<string> {
    const work = await mkdtemp(join(this.opts.dir, '.sign-'));
    try {
      await writeFile(join(work, 'openssl.cnf'), opensslConfig(o.ext));
      await writeFile(join(work, 'index.txt'), '');
      await writeFile(join(work, 'serial'), '01\n');
      await openssl(
        ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'key.pem', '-out', 'req.csr', '-subj', o.subj],
        work,
      );
      const signer = o.issuer ? ['-cert', 'issuer.crt', '-keyfile', 'issuer.key'] : ['-selfsign', '-keyfile', 'key.pem'];
      if (o.issuer) {
        await writeFile(join(work, 'issuer.crt'), o.issuer.certPem);
        await writeFile(join(work, 'issuer.key'), o.issuer.keyPem, { mode: 0o600 });
      }
      const dates = ['-startdate', asn1Time(Math.floor(o.start / 1000) * 1000), '-enddate', asn1Time(Math.floor(o.end / 1000) * 1000)];
      await openssl(
        ['ca', '-batch', '-config', 'openssl.cnf', ...signer, '-in', 'req.csr', '-out', 'cert.pem', ...dates, '-extensions', 'ext', '-notext', '-rand_serial'],
        work,
      );
      return (await readFile(join(work, 'cert.pem'), 'utf8')) + (await readFile(join(work, 'key.pem'), 'utf8'));
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }
}

const CA_EXT = 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n';

/** What QEMU's sanity checks ask of a certificate that is both server and client: no CA, both usages. */
const leafExt = (nodeName: string) =>
  `subjectAltName=DNS:${nodeName}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nauthorityKeyIdentifier=keyid\n`;

/** `openssl ca` wants a database and a policy; the subject is taken as given (CN and OU). */
const opensslConfig = (ext: string) => `[ ca ]
default_ca = vca
[ vca ]
database = ./index.txt
serial = ./serial
new_certs_dir = .
default_md = sha256
policy = pol
unique_subject = no
email_in_dn = no
[ pol ]
organizationalUnitName = optional
commonName = supplied
[ ext ]
${ext}`;

/** Writes `path` through a temporary file and a rename: a reader sees the old text or the new, never half. */
async function atomicWrite(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFile(tmp, text, { mode: 0o600 });
  await rename(tmp, path);
}
