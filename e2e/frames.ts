/**
 * A raw capture of the frames one MAC sends, seen on an interface of a node's namespace (python3,
 * AF_PACKET): what tests of the announce after a live migration look at. ETH_P_ALL, not a
 * protocol-bound socket: on a bridge port the bridge takes a frame before those would see it.
 * captureStream: every frame on an interface, counted per TCP port and searched for a marker
 * (the live-migration TLS test's check that the bytes on the wire are not the guest's plaintext).
 */
import { spawn } from 'node:child_process';
import { eventually } from './harness.ts';

const SCRIPT = `
import socket, sys, time
mac = bytes.fromhex(sys.argv[2].replace(':', ''))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
print('ready', flush=True)
while True:
    f = s.recv(65535)
    if f[6:12] != mac:
        continue
    arp = ' %s %s' % (socket.inet_ntoa(f[28:32]), socket.inet_ntoa(f[38:42])) if f[12:14] == b'\\x08\\x06' else ''
    print('%.3f %s%s' % (time.time(), f[12:14].hex(), arp), flush=True)
`;

/** A frame: when python saw it (s), its ethertype (hex, e.g. `8035` RARP, `0806` ARP) and, for ARP, the sender and target IPs. */
export interface Frame {
  t: number;
  type: string;
  senderIp?: string;
  targetIp?: string;
}

export interface Capture {
  frames(): Frame[];
  stop(): void;
}

/** Starts capturing on `iface` in `netns` the frames whose source is `mac`; resolves once the socket is bound. */
export async function captureFrames(netns: string, iface: string, mac: string): Promise<Capture> {
  const p = spawn('ip', ['netns', 'exec', netns, '/usr/bin/python3', '-c', SCRIPT, iface, mac], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  const capture: Capture = {
    frames: () =>
      out
        .split('\n')
        .slice(1)
        .filter(Boolean)
        .map((l) => l.split(' '))
        .map(([t, type, senderIp, targetIp]) => ({ t: Number(t), type, senderIp, targetIp })),
    stop: () => p.kill('SIGKILL'),
  };
  await eventually('the capture ready', async () => (out.startsWith('ready') ? true : undefined), 30_000).catch((e: unknown) => {
    capture.stop();
    throw e;
  });
  return capture;
}

const STREAM_SCRIPT = `
import json, signal, socket, sys
marker = sys.argv[2].encode()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
# A large queue (SO_RCVBUFFORCE, as root): it holds a whole migration (~100 MiB for the tiny
# guest); what does not fit is counted as drops.
try:
    s.setsockopt(socket.SOL_SOCKET, 33, 512 << 20)
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 512 << 20)
s.bind((sys.argv[1], 0))
frames = marked = size = 0
ports = {}
def count(f):
    global frames, marked, size
    frames += 1
    size += len(f)
    hit = marker in f
    marked += hit
    # IPv4 TCP: the payload counted under both ports (a GSO frame holds many segments).
    if f[12:14] == b'\\x08\\x00' and f[23] == 6:
        t = 14 + (f[14] & 15) * 4
        n = len(f) - t - (f[t + 12] >> 4) * 4
        for p in {int.from_bytes(f[t:t + 2], 'big'), int.from_bytes(f[t + 2:t + 4], 'big')}:
            c = ports.setdefault(str(p), {'bytes': 0, 'marked': 0})
            c['bytes'] += n
            c['marked'] += hit
# Nothing read while the migration runs (no CPU taken from the QEMUs under test, whose
# announce right after the switch the test times): the frames wait in the queue until SIGTERM.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print('ready', flush=True)
signal.sigwait({signal.SIGTERM})
s.setblocking(False)
try:
    while True:
        count(s.recv(1 << 18))
except BlockingIOError:
    pass
st = s.getsockopt(263, 6, 8)  # SOL_PACKET, PACKET_STATISTICS: packets, drops
print(json.dumps({'frames': frames, 'bytes': size, 'marked': marked, 'drops': int.from_bytes(st[4:8], sys.byteorder), 'ports': ports}), flush=True)
`;

/** What captureStream saw: all frames (count, bytes, those holding the marker) and, per TCP port, payload bytes and marked frames. */
export interface StreamSummary {
  frames: number;
  bytes: number;
  marked: number;
  /** Frames the kernel dropped because the capture's queue was full. */
  drops: number;
  ports: Record<string, { bytes: number; marked: number }>;
}

export interface StreamCapture {
  /** Ends the capture and returns its counts. */
  stop(): Promise<StreamSummary>;
  /** Ends it without counts (cleanup). */
  kill(): void;
}

/**
 * Starts capturing every frame on `iface` in `netns`; resolves once the socket is bound. The
 * frames are only queued (in the kernel) until stop(), which searches each for `marker` (ASCII)
 * and counts them.
 */
export async function captureStream(netns: string, iface: string, marker: string): Promise<StreamCapture> {
  const p = spawn('ip', ['netns', 'exec', netns, '/usr/bin/python3', '-c', STREAM_SCRIPT, iface, marker], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (err += d));
  const exited = new Promise<void>((r) => p.on('close', () => r()));
  const capture: StreamCapture = {
    async stop() {
      p.kill('SIGTERM');
      // Reading a full queue takes a second or two; a capture stuck longer is killed (no counts).
      const stuck = setTimeout(() => p.kill('SIGKILL'), 60_000);
      await exited;
      clearTimeout(stuck);
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (!line) throw new Error(`the capture on ${iface} in ${netns} gave no counts: ${err || out}`);
      return JSON.parse(line) as StreamSummary;
    },
    kill: () => p.kill('SIGKILL'),
  };
  await eventually('the capture ready', async () => (out.startsWith('ready') ? true : undefined), 30_000).catch((e: unknown) => {
    capture.kill();
    throw e;
  });
  return capture;
}
