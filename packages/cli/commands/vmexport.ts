/**
 * virtctl's `vmexport`: `vessel vmexport create NAME --vm=VM|--snapshot=S|--pvc=P [--ttl=1h]`,
 * `vessel vmexport delete NAME`, and `vessel vmexport download NAME --output FILE [--volume V]
 * [--format gzip|raw]` (with a source flag it creates the export first and deletes it after,
 * unless --keep-vme). The download waits for the export to be Ready, reads its token from the
 * Secret in status.tokenSecretRef and fetches the external link, trusting the link's `cert`.
 */
import { createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { get as httpsGet } from 'node:https';
import type { IncomingMessage } from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { refs, vmexport } from '@vessel/api';
import { isStatusError, type Client, type KubeObject } from '@vessel/client';
import { contextOf, out } from '../context.ts';
import { UsageError } from '../errors.ts';

const { SECRETS, VMEXPORTS } = refs;

interface SourceFlags {
  vm?: string;
  snapshot?: string;
  pvc?: string;
  ttl?: string;
}

function exportObject(name: string, f: SourceFlags): KubeObject | undefined {
  const given = [f.vm && 'vm', f.snapshot && 'snapshot', f.pvc && 'pvc'].filter(Boolean);
  if (given.length > 1) throw new UsageError('give only one of --vm, --snapshot and --pvc');
  const source = f.vm
    ? { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: f.vm }
    : f.snapshot
      ? { apiGroup: 'snapshot.kubevirt.io', kind: 'VirtualMachineSnapshot', name: f.snapshot }
      : f.pvc
        ? { apiGroup: '', kind: 'PersistentVolumeClaim', name: f.pvc }
        : undefined;
  if (!source) return undefined;
  return {
    apiVersion: 'export.kubevirt.io/v1beta1',
    kind: 'VirtualMachineExport',
    metadata: { name },
    spec: { source, ...(f.ttl ? { ttlDuration: f.ttl } : {}) },
  };
}

const sourceOptions = (c: Command) =>
  c
    .option('--vm <name>', 'export the volumes of this VirtualMachine (it must be stopped)')
    .option('--snapshot <name>', 'export the volumes of this VirtualMachineSnapshot')
    .option('--pvc <name>', 'export this PersistentVolumeClaim')
    .option('--ttl <duration>', 'how long the export lives (default 2h), e.g. 30m');

type Link = { cert?: string; volumes?: { name: string; formats?: { format: string; url: string }[] }[] };

async function waitReady(client: Client, ns: string, name: string, timeoutMs: number): Promise<KubeObject> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const e = await client.get(VMEXPORTS, name, { namespace: ns });
    const status = (e.status ?? {}) as { phase?: string; conditions?: { type: string; reason?: string; message?: string }[] };
    if (status.phase === 'Ready') return e;
    const ready = status.conditions?.find((c) => c.type === 'Ready');
    const why = `${status.phase ?? 'Pending'}${ready?.reason ? ` (${ready.reason}: ${ready.message})` : ''}`;
    if (why !== last) out(`waiting for VirtualMachineExport ${name}: ${why}\n`);
    last = why;
    if (Date.now() > deadline) throw new UsageError(`VirtualMachineExport ${name} is not Ready after ${timeoutMs / 1000} s: ${why}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** GET `url` with the export token into `file` (via a temporary, renamed when complete). */
async function download(url: string, token: string, cert: string | undefined, file: string, insecure: boolean): Promise<number> {
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = httpsGet(
      url,
      { headers: { [vmexport.EXPORT_TOKEN_HEADER]: token }, ...(insecure ? { rejectUnauthorized: false } : cert ? { ca: cert } : {}) },
      resolve,
    );
    req.on('error', reject);
  });
  if ((res.statusCode ?? 0) >= 400) {
    let body = '';
    for await (const c of res) body += String(c);
    let message = body;
    try {
      message = (JSON.parse(body) as { message?: string }).message ?? body;
    } catch {
      /* text */
    }
    throw new UsageError(`download refused (HTTP ${res.statusCode}): ${message}`);
  }
  const part = `${file}.part`;
  let bytes = 0;
  res.on('data', (c: Buffer) => (bytes += c.length));
  try {
    await pipeline(res, createWriteStream(part));
    if (!res.complete) throw new UsageError('the download was cut off: try again');
    await rename(part, file);
  } catch (e) {
    await rm(part, { force: true });
    throw e;
  }
  return bytes;
}

export function registerVmExport(program: Command): void {
  const cmd = program.command('vmexport').description('export VM, snapshot or claim volumes (virtctl vmexport)');
  sourceOptions(cmd.command('create').description('create a VirtualMachineExport').argument('<name>', 'the export name')).action(
    async (name: string, opts: SourceFlags, sub: Command) => {
      const ctx = contextOf(sub);
      const obj = exportObject(name, opts);
      if (!obj) throw new UsageError('give the source: --vm, --snapshot or --pvc');
      await ctx.client().create(VMEXPORTS, obj, { namespace: ctx.namespace() });
      out(`VirtualMachineExport ${ctx.namespace()}/${name} created\n`);
    },
  );
  cmd
    .command('delete')
    .description('delete a VirtualMachineExport')
    .argument('<name>', 'the export name')
    .action(async (name: string, _opts: unknown, sub: Command) => {
      const ctx = contextOf(sub);
      await ctx.client().delete(VMEXPORTS, name, { namespace: ctx.namespace() });
      out(`VirtualMachineExport ${ctx.namespace()}/${name} deleted\n`);
    });
  sourceOptions(
    cmd
      .command('download')
      .description('download a volume of a Ready export (creating the export first when a source is given)')
      .argument('<name>', 'the export name')
      .requiredOption('--output <file>', 'where to write the volume')
      .option('--volume <name>', 'the volume to download (required when the export has several)')
      .option('--format <format>', 'gzip or raw', 'gzip')
      .option('--keep-vme', 'keep an export this command created')
      .option('--insecure', "do not check the server's certificate against the export's cert")
      .option('--timeout <seconds>', 'how long to wait for the export to be Ready', '300'),
  ).action(
    async (
      name: string,
      opts: SourceFlags & { output: string; volume?: string; format: string; keepVme?: boolean; insecure?: boolean; timeout: string },
      sub: Command,
    ) => {
      if (opts.format !== 'gzip' && opts.format !== 'raw') throw new UsageError(`--format must be gzip or raw, not ${JSON.stringify(opts.format)}`);
      const ctx = contextOf(sub);
      const client = ctx.client();
      const ns = ctx.namespace();
      const obj = exportObject(name, opts);
      if (obj) await client.create(VMEXPORTS, obj, { namespace: ns });
      try {
        const e = await waitReady(client, ns, name, Number(opts.timeout) * 1000);
        const status = e.status as { tokenSecretRef?: string; links?: { external?: Link } };
        const link = status.links?.external ?? {};
        const volumes = link.volumes ?? [];
        const volume = opts.volume ? volumes.find((v) => v.name === opts.volume) : volumes.length === 1 ? volumes[0] : undefined;
        if (!volume)
          throw new UsageError(
            opts.volume
              ? `VirtualMachineExport ${name} has no volume ${opts.volume} (it has ${volumes.map((v) => v.name).join(', ')})`
              : `VirtualMachineExport ${name} has several volumes: choose one with --volume (${volumes.map((v) => v.name).join(', ')})`,
          );
        const url = volume.formats?.find((f) => f.format === opts.format)?.url;
        if (!url) throw new UsageError(`volume ${volume.name} is not offered as ${opts.format}`);
        const secret = await client.get(SECRETS, status.tokenSecretRef ?? '', { namespace: ns });
        const token = Buffer.from(String((secret.data as Record<string, string> | undefined)?.token ?? ''), 'base64').toString('utf8');
        const bytes = await download(url, token, link.cert || undefined, opts.output, !!opts.insecure);
        out(`Downloaded ${bytes} bytes of volume ${volume.name} (${opts.format}) to ${opts.output}\n`);
      } finally {
        if (obj && !opts.keepVme)
          await client.delete(VMEXPORTS, name, { namespace: ns }).catch((err: unknown) => {
            if (!isStatusError(err, 'NotFound')) throw err;
          });
      }
    },
  );
}
