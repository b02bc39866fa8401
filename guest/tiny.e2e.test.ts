// Boots the tiny guest with real QEMU (TCG): serial protocol, DHCP, TCP service, counter on disk,
// cloud-init NoCloud, ACPI power-off, and a second boot from the disk alone (BIOS + syslinux).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ensureTinyGuest, TINY_PORTS, TINY_SERIAL, type TinyGuest } from './tiny.ts';

const QEMU = 'qemu-system-x86_64';

function exec(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}: ${out}`));
    });
  });
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The promise's value, or undefined after ms (the timer does not keep the process alive). */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** A QEMU process with its serial console on stdout (collected as lines) and a QMP socket. */
class Vm {
  readonly lines: { t: number; line: string }[] = [];
  readonly started = performance.now();
  firstLineMs: number | undefined;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>;
  private proc: ChildProcess;
  private partial = '';
  private waiters: (() => void)[] = [];
  stderr = '';

  constructor(
    args: string[],
    readonly qmpPath: string,
  ) {
    this.proc = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc.stdout!.setEncoding('utf8').on('data', (d: string) => this.onSerial(d));
    this.proc.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.exited = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        resolve({ code, signal, ms: performance.now() - this.started });
        this.wake();
      });
    });
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  private onSerial(d: string) {
    this.firstLineMs ??= performance.now() - this.started;
    const parts = (this.partial + d).split(/\r?\n/);
    this.partial = parts.pop() ?? '';
    const t = performance.now() - this.started;
    for (const line of parts) {
      this.lines.push({ t, line });
      if (process.env.VESSEL_TEST_SERIAL) console.error(`[serial ${(t / 1000).toFixed(2)}] ${line}`);
    }
    this.wake();
  }

  private wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Waits for a serial line matching re (searching from line index `from`); returns the match and time. */
  async waitFor(re: RegExp | string, timeoutMs: number, from = 0): Promise<{ m: RegExpMatchArray; t: number; index: number }> {
    const rx = typeof re === 'string' ? new RegExp(`^${re}$`) : re;
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      for (let i = from; i < this.lines.length; i++) {
        const m = this.lines[i].line.match(rx);
        if (m) return { m, t: this.lines[i].t, index: i };
      }
      const failed = this.lines.find((l) => TINY_SERIAL.failed.test(l.line));
      if (failed) throw new Error(`guest failed: ${failed.line}`);
      if (!this.running) throw new Error(`QEMU exited while waiting for ${rx}: ${this.stderr.trim()}\n${this.tail()}`);
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${rx}\n${this.tail()}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  tail(n = 30): string {
    return this.lines
      .slice(-n)
      .map((l) => l.line)
      .join('\n');
  }

  /** Sends one QMP command on a fresh connection (greeting, qmp_capabilities, command). */
  async qmp(execute: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<unknown> {
    const sock = net.connect(this.qmpPath);
    sock.setEncoding('utf8');
    try {
      return await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`QMP ${execute} timed out`)), timeoutMs);
        let buf = '';
        let step = 0;
        sock.on('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
        sock.on('data', (d: string) => {
          buf += d;
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const msg = JSON.parse(buf.slice(0, nl)) as { QMP?: unknown; return?: unknown; error?: { desc: string }; id?: number };
            buf = buf.slice(nl + 1);
            if (msg.QMP && step === 0) {
              step = 1;
              sock.write(JSON.stringify({ execute: 'qmp_capabilities', id: 1 }) + '\n');
            } else if (msg.id === 1) {
              if (msg.error) return reject(new Error(msg.error.desc));
              sock.write(JSON.stringify({ execute, arguments: args, id: 2 }) + '\n');
            } else if (msg.id === 2) {
              clearTimeout(timer);
              if (msg.error) reject(new Error(`QMP ${execute}: ${msg.error.desc}`));
              else resolve(msg.return);
            }
          }
        });
      });
    } finally {
      sock.destroy();
    }
  }

  async kill(): Promise<void> {
    if (!this.running) return;
    this.proc.kill('SIGKILL');
    await this.exited;
  }
}

/** Connects to the forwarded guest port and reads its one line; retries until the guest listens. */
async function readService(port: number, timeoutMs: number): Promise<string> {
  const deadline = performance.now() + timeoutMs;
  let last = '';
  while (performance.now() < deadline) {
    const line = await new Promise<string>((resolve) => {
      const sock = net.connect(port, '127.0.0.1');
      let data = '';
      const timer = setTimeout(() => sock.destroy(), 3000);
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => (data += d));
      sock.on('error', () => undefined);
      sock.on('close', () => {
        clearTimeout(timer);
        resolve(data.trim());
      });
    });
    if (/counter=\d+/.test(line)) return line;
    last = line;
    await sleep(500);
  }
  throw new Error(`no answer from guest port via 127.0.0.1:${port} within ${timeoutMs} ms (last: ${JSON.stringify(last)})`);
}

describe('tiny guest under QEMU TCG', { timeout: 10 * 60_000 }, () => {
  let guest: TinyGuest;
  let tmp: string;
  const vms: Vm[] = [];
  let overlay: string;
  let lastCounter = 0;

  before(async () => {
    guest = await ensureTinyGuest();
    tmp = await mkdtemp(path.join(tmpdir(), 'vessel-tiny-'));
    // The cached image stays pristine: every run writes to a qcow2 overlay.
    overlay = path.join(tmp, 'root.qcow2');
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', guest.disk, '-F', 'qcow2', overlay]);
  });

  after(async () => {
    for (const vm of vms) await vm.kill();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  async function boot(name: string, opts: { kernelBoot: boolean; extraDrives?: string[] }): Promise<{ vm: Vm; port: number }> {
    const port = await freePort();
    const qmpPath = path.join(tmp, `${name}.qmp`);
    const args = [
      '-accel',
      'tcg',
      '-machine',
      'q35',
      '-m',
      '256',
      '-smp',
      '1',
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-chardev',
      'stdio,id=serial0,signal=off',
      '-serial',
      'chardev:serial0',
      '-qmp',
      `unix:${qmpPath},server=on,wait=off`,
      '-drive',
      `file=${overlay},if=virtio,format=qcow2`,
      ...(opts.extraDrives ?? []).flatMap((d) => ['-drive', d]),
      '-netdev',
      `user,id=net0,hostfwd=tcp:127.0.0.1:${port}-:${TINY_PORTS.tcp}`,
      '-device',
      'virtio-net-pci,netdev=net0',
    ];
    if (opts.kernelBoot) args.push('-kernel', guest.kernel, '-initrd', guest.initrd, '-append', guest.cmdline);
    const vm = new Vm(args, qmpPath);
    vms.push(vm);
    return { vm, port };
  }

  test('kernel boot: marker, DHCP, cloud-init, TCP service, counter, ACPI power-off', async () => {
    const cidata = path.join(tmp, 'cidata.img');
    await exec('mkfs.vfat', ['-C', '-n', 'cidata', cidata, '1024']);
    await writeFile(path.join(tmp, 'meta-data'), '{"instance-id": "iid-tiny-test-1", "local-hostname": "tiny-test"}\n');
    await writeFile(path.join(tmp, 'user-data'), '#!/bin/sh\necho "VESSEL-TEST-USERDATA $(hostname)"\n');
    await exec('mcopy', ['-i', cidata, path.join(tmp, 'meta-data'), path.join(tmp, 'user-data'), '::/'], 10_000);

    const { vm, port } = await boot('boot1', { kernelBoot: true, extraDrives: [`file=${cidata},if=virtio,format=raw,readonly=on`] });
    const ready = await vm.waitFor(TINY_SERIAL.ready, 60_000);
    console.log(
      `boot 1 (kernel boot): first serial line ${(vm.firstLineMs! / 1000).toFixed(2)} s, ${TINY_SERIAL.ready} ${(ready.t / 1000).toFixed(2)} s after QEMU launch`,
    );
    assert.ok(
      vm.lines.some((l) => /^\[\s*\d+\.\d+\] Linux version/.test(l.line)),
      'kernel boot messages on serial',
    );

    const ci = await vm.waitFor(TINY_SERIAL.cloudInit, 5_000);
    assert.equal(ci.m[1], 'iid-tiny-test-1');
    assert.equal((await vm.waitFor(TINY_SERIAL.hostname, 5_000)).m[1], 'tiny-test');
    await vm.waitFor('VESSEL-TEST-USERDATA tiny-test', 15_000);
    const ip = await vm.waitFor(TINY_SERIAL.ip, 30_000);
    assert.match(ip.m[1], /^10\.0\.2\.\d+$/, 'slirp DHCP address');

    const first = await readService(port, 30_000);
    const m1 = first.match(/^hostname=(\S+) counter=(\d+)$/);
    assert.ok(m1, `service line: ${first}`);
    assert.equal(m1[1], 'tiny-test');
    const c0 = await vm.waitFor(TINY_SERIAL.counter, 10_000);
    await vm.waitFor(new RegExp(`^VESSEL-COUNTER ${Number(c0.m[1]) + 2}$`), 15_000);
    const second = await readService(port, 10_000);
    const n1 = Number(m1[2]);
    const n2 = Number(second.match(/counter=(\d+)/)![1]);
    assert.ok(n2 >= n1 + 2, `counter increases over TCP: ${n1} then ${n2}`);

    const t0 = performance.now();
    await vm.qmp('system_powerdown');
    const exit = await within(vm.exited, 30_000);
    assert.ok(exit, `QEMU still running 30 s after system_powerdown\n${vm.tail()}`);
    console.log(`system_powerdown -> QEMU exit: ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    assert.equal(exit.code, 0);
    assert.ok(
      vm.lines.some((l) => l.line === 'VESSEL-POWERDOWN'),
      'acpid saw the power button',
    );
    assert.ok(
      vm.lines.some((l) => l.line === 'VESSEL-SHUTDOWN-DONE root=ro'),
      `root remounted read-only at shutdown\n${vm.tail()}`,
    );
    const counters = vm.lines.map((l) => l.line.match(/^VESSEL-COUNTER (\d+)$/)).filter((m) => m !== null);
    lastCounter = Number(counters[counters.length - 1]![1]);
    assert.ok(lastCounter >= n2);
  });

  test('disk-only boot (BIOS + syslinux) continues the counter; cloud-init from an ISO 9660 cidata', async (t) => {
    if (lastCounter === 0) return t.skip('first boot did not finish');
    // KubeVirt's cloudInitNoCloud volume is an ISO 9660 image labelled cidata.
    const dir = path.join(tmp, 'cidata-iso');
    await mkdir(dir);
    await writeFile(path.join(dir, 'meta-data'), 'instance-id: iid-tiny-test-2\nlocal-hostname: tiny-iso\n');
    await writeFile(path.join(dir, 'user-data'), '#cloud-config\nruncmd: [echo VESSEL-TEST-USERDATA-SHOULD-NOT-RUN]\n');
    const iso = path.join(tmp, 'cidata.iso');
    await exec('genisoimage', ['-quiet', '-output', iso, '-volid', 'cidata', '-joliet', '-rock', path.join(dir, 'meta-data'), path.join(dir, 'user-data')]);

    const { vm, port } = await boot('boot2', { kernelBoot: false, extraDrives: [`file=${iso},if=virtio,format=raw,readonly=on`] });
    const ready = await vm.waitFor(TINY_SERIAL.ready, 90_000);
    console.log(
      `boot 2 (disk only): first serial line ${(vm.firstLineMs! / 1000).toFixed(2)} s, ${TINY_SERIAL.ready} ${(ready.t / 1000).toFixed(2)} s after QEMU launch`,
    );
    assert.equal((await vm.waitFor(TINY_SERIAL.cloudInit, 5_000)).m[1], 'iid-tiny-test-2');
    assert.equal((await vm.waitFor(TINY_SERIAL.hostname, 5_000)).m[1], 'tiny-iso');
    assert.ok(!vm.lines.some((l) => /EXT4-fs \(vda2\): recovery/.test(l.line)), 'clean shutdown: no journal recovery');
    const c = await vm.waitFor(TINY_SERIAL.counter, 15_000);
    const n = Number(c.m[1]);
    assert.ok(n > lastCounter && n <= lastCounter + 2, `counter continues: last ${lastCounter} before power-off, first ${n} after boot`);
    const line = await readService(port, 30_000);
    assert.match(line, /^hostname=tiny-iso counter=\d+$/);
    assert.ok(!vm.lines.some((l) => l.line.includes('VESSEL-USERDATA-START')), 'user-data that is not a script is not run');
    await vm.kill();
  });
});
