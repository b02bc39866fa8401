/** `--listen HOST:PORT` as `vessel server`, `vessel up` and `vessel agent` take it. */

export interface ListenAddress {
  host: string;
  port: number;
}

/**
 * Splits HOST:PORT ("[::1]:6443" for IPv6); an empty host is 127.0.0.1, so nothing listens
 * beyond this host unless asked. `example` goes into the error message.
 */
export function parseListen(listen: string, example?: string): ListenAddress {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(listen);
  if (!m) throw new Error(`--listen must be HOST:PORT${example ? ` (for example ${example})` : ''}, not "${listen}"`);
  return { host: m[1] || '127.0.0.1', port: Number(m[2]) };
}
