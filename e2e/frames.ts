/**
 * A raw capture of the frames one MAC sends, seen on an interface of a node's namespace (python3,
 * AF_PACKET): what tests of the announce after a live migration look at. ETH_P_ALL, not a
 * protocol-bound socket: on a bridge port the bridge takes a frame before those would see it.
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
