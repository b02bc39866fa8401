/**
 * govmomi's vCenter simulator for the vsphere provider's tests: e2e/vcsim/main.go (+ cbt.go, our
 * Changed Block Tracking test double) built offline
 * (GO111MODULE=off against Debian's golang-github-vmware-govmomi-dev in /usr/share/gocode) once
 * per source hash into the cache ($VESSEL_CACHE_DIR/vcsim, default /var/cache/vessel/vcsim), then
 * started on loopback with TLS. `stop()` closes its stdin (it removes its datastore directories)
 * and kills it if it lingers.
 */
import { spawn, execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import https from 'node:https';
import { access, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
// main.go and cbt.go (our CBT test double), built together.
const SOURCES = ['main.go', 'cbt.go'].map((f) => path.join(HERE, f));
const GOPATH = '/usr/share/gocode';

export interface Vcsim {
  /** https://127.0.0.1:PORT/sdk (no credentials in it). */
  url: string;
  user: string;
  password: string;
  /** PEM of the server's self-signed certificate, and of an unrelated one (a wrong CA). */
  cert: string;
  otherCert: string;
  /** Datastore name → its directory on this host. */
  datastores: Record<string, string>;
  /** Bytes the datastore's /folder interface has served so far, per URL path (`/folder/VM/disk1-flat.vmdk`). */
  reads(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

let building: Promise<string> | undefined;

/** The built simulator's path, building it (about 20 s) when the cache has none for this source. */
export function ensureVcsim(): Promise<string> {
  building ??= (async () => {
    const goVersion = (await promisify(execFile)('go', ['version'])).stdout.trim();
    const h = createHash('sha256');
    for (const f of SOURCES) h.update(await readFile(f));
    const hash = h.update(goVersion).digest('hex').slice(0, 16);
    const dir = path.join(process.env.VESSEL_CACHE_DIR ?? '/var/cache/vessel', 'vcsim');
    const bin = path.join(dir, `vcsim-${hash}`);
    try {
      await access(bin);
      return bin;
    } catch {
      /* build below */
    }
    await access(path.join(GOPATH, 'src/github.com/vmware/govmomi/simulator')).catch(() => {
      throw new Error('govmomi is missing: apt-get install golang-go golang-github-vmware-govmomi-dev (scripts/setup.sh)');
    });
    await mkdir(dir, { recursive: true });
    const tmp = `${bin}.${process.pid}.tmp`;
    await promisify(execFile)('go', ['build', '-o', tmp, ...SOURCES], {
      env: { ...process.env, GO111MODULE: 'off', GOPATH, GOFLAGS: '', GOCACHE: path.join(dir, 'gocache'), GOPROXY: 'off' },
      timeout: 5 * 60_000,
    });
    await rename(tmp, bin);
    return bin;
  })();
  building.catch(() => (building = undefined));
  return building;
}

/** Starts a simulator; `memory`/`disk` set a VM's memory (MB) and its first disk's capacity (bytes). */
export async function startVcsim(opts: { memory?: Record<string, number>; disk?: Record<string, number> } = {}): Promise<Vcsim> {
  const bin = await ensureVcsim();
  const args = [
    ...Object.entries(opts.memory ?? {}).flatMap(([vm, mb]) => ['-memory', `${vm}=${mb}`]),
    ...Object.entries(opts.disk ?? {}).flatMap(([vm, b]) => ['-disk', `${vm}=${b}`]),
  ];
  const child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout });
    rl.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`vcsim exited (${code}): ${stderr}`)));
    setTimeout(() => reject(new Error(`vcsim did not start in 30 s: ${stderr}`)), 30_000).unref();
  });
  const info = JSON.parse(line) as { url: string; cert: string; otherCert: string; datastores: Record<string, string> };
  const u = new URL(info.url);
  const [user, password] = [decodeURIComponent(u.username), decodeURIComponent(u.password)];
  u.username = '';
  u.password = '';
  return {
    url: u.toString(),
    user,
    password,
    cert: info.cert,
    otherCert: info.otherCert,
    datastores: info.datastores,
    reads: () =>
      new Promise((resolve, reject) => {
        https
          .get(new URL('/vessel-test/reads', u), { ca: info.cert }, (res) => {
            let body = '';
            res.setEncoding('utf8').on('data', (d: string) => (body += d));
            res.on('end', () => resolve(JSON.parse(body) as Record<string, number>));
          })
          .on('error', reject);
      }),
    async stop() {
      child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
      // Killed before its own cleanup: remove what it left.
      for (const d of Object.values(info.datastores)) await rm(d, { recursive: true, force: true });
    },
  };
}
