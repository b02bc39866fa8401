/**
 * The client side of an upload (`vessel image-upload`, `vessel up` for the tiny image): ask for
 * a token, ask how much the agent already has (GET, Upload-Offset), stream the rest of the
 * file from there, and on a dropped connection or a restarting server do the same again: the
 * bytes already sent are kept, so a retry sends only what is missing.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { StatusError, statusErrorFrom, type Client } from '@vessel/client';

export interface UploadOptions {
  namespace: string;
  pvcName: string;
  file: string;
  /** Called with bytes sent so far (the resumed part included) and the total. */
  onProgress?: (sent: number, total: number) => void;
  /** Called when a try fails and another will follow. */
  onRetry?: (error: Error, resumeFrom: number) => void;
  /** Tries before giving up (each resumes); default 10. */
  attempts?: number;
  /** Answer once the bytes are stored instead of after the import (upload-async). */
  async?: boolean;
}

async function body(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export async function requestUploadToken(client: Client, namespace: string, pvcName: string): Promise<string> {
  const r = await client.request<{ status: { token: string } }>(
    'POST',
    `/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/${encodeURIComponent(namespace)}/uploadtokenrequests`,
    {
      body: { apiVersion: 'upload.cdi.kubevirt.io/v1beta1', kind: 'UploadTokenRequest', metadata: { name: pvcName, namespace }, spec: { pvcName } },
    },
  );
  return r.status.token;
}

/** A failed answer; worth another try when the server or agent was busy or restarting, not when the image or request is wrong. */
function failure(code: number, text: string): StatusError & { retryable: boolean } {
  return Object.assign(statusErrorFrom(code, text), { retryable: code >= 500 || code === 409 || code === 429 || code === 499 });
}

/** Uploads `file` into the claim; resolves when the server has imported it (or stored it, with async). */
export async function uploadImage(client: Client, opts: UploadOptions): Promise<void> {
  const total = (await stat(opts.file)).size;
  const path = opts.async ? '/v1beta1/upload-async' : '/v1beta1/upload';
  let token = await requestUploadToken(client, opts.namespace, opts.pvcName);
  const attempts = opts.attempts ?? 10;
  for (let attempt = 1; ; attempt++) {
    let offset = 0;
    try {
      // GET rather than HEAD: a refusal (say, an upload already cut off for its size) carries its reason.
      const head = await client.stream('GET', path, { bearer: token });
      const headText = await body(head);
      if (head.statusCode === 401) {
        token = await requestUploadToken(client, opts.namespace, opts.pvcName);
        continue;
      }
      if ((head.statusCode ?? 500) >= 400) throw failure(head.statusCode ?? 500, headText);
      offset = Number(head.headers['upload-offset'] ?? 0);
      if (offset > total) offset = 0; // not this file's bytes: start over
      const stream = createReadStream(opts.file, { start: offset });
      let sent = offset;
      stream.on('data', (c) => {
        sent += c.length;
        opts.onProgress?.(sent, total);
      });
      opts.onProgress?.(offset, total);
      const res = await client.stream('POST', path, {
        bearer: token,
        body: stream,
        headers: { 'Upload-Offset': String(offset), 'Upload-Length': String(total), 'Content-Length': String(total - offset) },
      });
      const text = await body(res);
      if (res.statusCode === 200) return;
      throw failure(res.statusCode ?? 500, text);
    } catch (e) {
      const err = e as Error & { retryable?: boolean };
      const retryable = err instanceof StatusError ? !!(e as { retryable?: boolean }).retryable : true; // network errors: retry
      if (!retryable || attempt >= attempts) throw err;
      opts.onRetry?.(err, offset);
      await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * 2 ** (attempt - 1))));
    }
  }
}
