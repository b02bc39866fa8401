/**
 * Test helpers for the importer's egress policy: a network namespace joined to the host by a
 * veth pair whose addresses (10.213.N.0/29) the test owns, and this file's two child roles,
 * run inside the namespace with `ip netns exec`:
 *   serve PORT FILE   an HTTP server on 0.0.0.0:PORT: /disk serves FILE, /to?u=URL redirects
 *                     to URL, /endless streams zeros forever; prints "REQ <path>" per request
 *   probe JSON        imports each {label,url} with the default policy and prints the results
 * Nothing here sends traffic anywhere but loopback and the namespace's link.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rm, rmdir, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SELF = import.meta.filename;

export interface TestNetns {
  name: string;
  /** The host's end of the veth (an address of this node). */
  hostIp: string;
  /** The namespace's end. */
  nsIp: string;
  /** An address on the link that nothing answers (connections to it time out). */
  silentIp: string;
  /** Starts `node --import tsx testing-egress.ts ...args` inside the namespace. */
  spawn(args: string[]): ChildProcess;
  close(): Promise<void>;
}

function ip(args: string[]): { ok: boolean; err: string } {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  return { ok: r.status === 0, err: `${r.stderr ?? ''}${r.error?.message ?? ''}`.trim() };
}

/** A namespace and veth pair, or a string saying why they cannot be made here (the tests skip). */
export async function makeNetns(): Promise<TestNetns | string> {
  if (process.getuid?.() !== 0) return 'needs root for ip netns';
  const used = spawnSync('ip', ['-4', '-o', 'addr'], { encoding: 'utf8' }).stdout ?? '';
  const free = Array.from({ length: 150 }, (_, i) => 100 + i).filter((n) => !used.includes(`10.213.${n}.`));
  if (!free.length) return 'no free 10.213.N.0/29 subnet';
  const n = free[Math.floor(Math.random() * free.length)];
  const tag = randomBytes(3).toString('hex');
  const name = `vsl-imp-${tag}`;
  const [hostIf, nsIf] = [`vih${tag}`, `vin${tag}`];
  const made = ip(['netns', 'add', name]);
  if (!made.ok) return `ip netns add failed: ${made.err}`;
  const etcDir = join('/etc/netns', name);
  const close = async () => {
    ip(['link', 'del', hostIf]);
    ip(['netns', 'del', name]);
    await rm(etcDir, { recursive: true, force: true });
    await rmdir('/etc/netns').catch(() => undefined); // only when empty: other namespaces may use it
  };
  try {
    // The namespace's resolver is its own address, where nothing listens: a name lookup fails
    // at once and no query leaves the namespace (ip netns exec mounts this over /etc/resolv.conf).
    await mkdir(etcDir, { recursive: true });
    await writeFile(join(etcDir, 'resolv.conf'), `nameserver 10.213.${n}.2\noptions timeout:1 attempts:1\n`);
    for (const args of [
      ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf],
      ['link', 'set', nsIf, 'netns', name],
      ['addr', 'add', `10.213.${n}.1/29`, 'dev', hostIf],
      ['link', 'set', hostIf, 'up'],
      ['-n', name, 'addr', 'add', `10.213.${n}.2/29`, 'dev', nsIf],
      ['-n', name, 'link', 'set', nsIf, 'up'],
      ['-n', name, 'link', 'set', 'lo', 'up'],
    ]) {
      const r = ip(args);
      if (!r.ok) throw new Error(`ip ${args.join(' ')}: ${r.err}`);
    }
  } catch (e) {
    await close();
    return (e as Error).message;
  }
  return {
    name,
    hostIp: `10.213.${n}.1`,
    nsIp: `10.213.${n}.2`,
    silentIp: `10.213.${n}.5`,
    spawn: (args) => spawn('ip', ['netns', 'exec', name, process.execPath, '--import', 'tsx', SELF, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }),
    close,
  };
}

/** The serve role, started in the namespace; `requests` collects the paths it was asked for. */
export async function serveInNetns(ns: TestNetns, file: string): Promise<{ port: number; requests: string[]; close(): Promise<void> }> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const child = ns.spawn(['serve', String(port), file]);
  const requests: string[] = [];
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      for (const m of out.matchAll(/^REQ (\S+)$/gm)) requests.push(m[1]);
      out = out.slice(out.lastIndexOf('\n') + 1);
      if (/READY/.test(d.toString())) resolve();
    });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.on('exit', (code) => reject(new Error(`namespace server exited (${code}): ${err}`)));
  });
  return {
    port,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  };
}

export interface ProbeResult {
  label: string;
  url: string;
  code: string;
  message: string;
}

/** The probe role: imports each URL inside the namespace with the default policy. */
export async function probeInNetns(ns: TestNetns, targets: { label: string; url: string }[], idleTimeoutMs: number): Promise<ProbeResult[]> {
  const child = ns.spawn(['probe', JSON.stringify({ targets, idleTimeoutMs })]);
  let out = '',
    err = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  const line = out.split('\n').find((l) => l.startsWith('RESULTS '));
  if (code !== 0 || !line) throw new Error(`probe failed (${code}): ${err}${out}`);
  return JSON.parse(line.slice('RESULTS '.length)) as ProbeResult[];
}

// ---------------------------------------------------------------------------------------
// Child roles

async function serve(port: number, file: string): Promise<void> {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    process.stdout.write(`REQ ${url.pathname}\n`);
    if (url.pathname === '/disk') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      createReadStream(file).pipe(res);
    } else if (url.pathname === '/to') {
      res.writeHead(302, { location: url.searchParams.get('u') ?? '/' }).end();
    } else if (url.pathname === '/endless') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(1 << 20);
      const more = () => {
        while (res.write(chunk));
      };
      res.on('drain', more);
      more();
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => server.listen(port, '0.0.0.0', r));
  process.stdout.write('READY\n');
}

async function probe(spec: { targets: { label: string; url: string }[]; idleTimeoutMs: number }): Promise<void> {
  const { importDisk } = await import('./import.ts');
  const dir = await mkdtemp(join(tmpdir(), 'vessel-egress-probe-'));
  const results: ProbeResult[] = [];
  try {
    for (const t of spec.targets) {
      try {
        await importDisk({ source: { kind: 'http', url: t.url }, dest: join(dir, 'disk.qcow2'), maxVirtualSize: 64 << 20, idleTimeoutMs: spec.idleTimeoutMs });
        results.push({ ...t, code: 'imported', message: '' });
      } catch (e) {
        results.push({ ...t, code: String((e as { code?: unknown }).code), message: (e as Error).message });
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  process.stdout.write(`RESULTS ${JSON.stringify(results)}\n`);
}

if (process.argv[1] === SELF) {
  const [role, a, b] = process.argv.slice(2);
  if (role === 'serve') await serve(Number(a), b);
  else if (role === 'probe') await probe(JSON.parse(a) as Parameters<typeof probe>[0]);
  else throw new Error(`unknown role ${role}`);
}
