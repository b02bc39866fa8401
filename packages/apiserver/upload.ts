/**
 * Uploads, CDI's way: a client asks for a token bound to one claim
 * (POST /apis/upload.cdi.kubevirt.io/v1beta1/namespaces/NS/uploadtokenrequests, authorized
 * like any create in NS), then sends the bytes to /v1beta1/upload (wait for the import) or
 * /v1beta1/upload-async with `Authorization: Bearer <token>`. The server checks the token
 * against the hash it left on the claim and streams the body to the agent that holds the
 * volume, pinning that agent's certificate. Vessel adds resume: HEAD (or GET) tells the bytes already
 * received (Upload-Offset), and a POST with Upload-Offset continues from there.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { request as httpsRequest } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { findByResource, storage } from '@vessel/api';
import { authorize, type User } from './auth.ts';
import { ApiError, invalid, unauthorized, undefinedIfNotFound } from './errors.ts';
import { agentRefusal, agentTarget } from './agents.ts';
import type { Resources } from './resources.ts';

const PVC = findByResource('', 'v1', 'persistentvolumeclaims')!;
const DV = findByResource('cdi.kubevirt.io', 'v1beta1', 'datavolumes')!;
/** CDI's upload tokens last 5 minutes; a large upload only needs the token at its start. */
const TOKEN_TTL_S = 5 * 60;

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Issues a token for one claim; its hash and expiry go on the claim (the newest token wins). */
export async function issueUploadToken(resources: Resources, user: User, namespace: string, body: unknown): Promise<Record<string, unknown>> {
  authorize(user, { verb: 'create', group: 'upload.cdi.kubevirt.io', resource: 'uploadtokenrequests', namespace });
  const pvcName = (body as { spec?: { pvcName?: unknown } } | undefined)?.spec?.pvcName;
  if (typeof pvcName !== 'string' || !pvcName) {
    throw new ApiError(422, 'Invalid', 'UploadTokenRequest is invalid: spec.pvcName: Required value', {
      kind: 'UploadTokenRequest',
      group: 'upload.cdi.kubevirt.io',
      causes: [{ reason: 'FieldValueRequired', field: 'spec.pvcName', message: 'Required value' }],
    });
  }
  const pvc = await resources.get(PVC, namespace, pvcName);
  const dvName = pvc.metadata.annotations?.[storage.POPULATED_FOR];
  // Only a claim an upload DataVolume fills takes bytes: a token for any other would lead to an upload the agent refuses.
  const notTarget = (why: string) =>
    invalid('UploadTokenRequest', 'upload.cdi.kubevirt.io', pvcName, [
      { reason: 'FieldValueInvalid', field: 'spec.pvcName', message: `PersistentVolumeClaim ${namespace}/${pvcName} is not an upload target: ${why}` },
    ]);
  if (!dvName) throw notTarget('no DataVolume fills it (create a DataVolume with spec.source.upload)');
  const dv = await resources.get(DV, namespace, dvName).catch(undefinedIfNotFound);
  if (!dv) throw notTarget(`its DataVolume ${dvName} is gone`);
  const source = (dv.spec as { source?: Record<string, unknown> } | undefined)?.source ?? {};
  if (!('upload' in source)) {
    throw notTarget(`its DataVolume ${dvName} imports from ${Object.keys(source)[0] ?? 'nothing'} (spec.source.upload is not set)`);
  }
  const token = `${Buffer.from(`${namespace}/${pvcName}`).toString('base64url')}.${randomBytes(24).toString('base64url')}`;
  const expires = Math.floor(Date.now() / 1000) + TOKEN_TTL_S;
  await resources.patch(
    PVC,
    namespace,
    pvcName,
    'merge',
    JSON.stringify({ metadata: { annotations: { [storage.UPLOAD_TOKEN]: `${sha256(token)}:${expires}` } } }),
    undefined,
  );
  return {
    apiVersion: 'upload.cdi.kubevirt.io/v1beta1',
    kind: 'UploadTokenRequest',
    metadata: { name: pvcName, namespace },
    spec: { pvcName },
    status: { token },
  };
}

/** Serves /v1beta1/upload[-async]: checks the token, then streams to the claim's agent. */
export async function proxyUpload(resources: Resources, req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
  const token = /^Bearer\s+(\S+)$/.exec(req.headers.authorization ?? '')?.[1];
  if (!token) throw unauthorized();
  const [claimRef] = token.split('.');
  const [namespace, name] = Buffer.from(claimRef ?? '', 'base64url')
    .toString('utf8')
    .split('/');
  if (!namespace || !name) throw new ApiError(401, 'Unauthorized', 'the upload token is not valid: request a new one');
  // A claim that is gone (or a name no claim can have) makes the token invalid (401); a store
  // failure stays a server error rather than telling the user to fetch a new token.
  const pvc = await resources.get(PVC, namespace, name).catch((e: unknown) => {
    if (e instanceof ApiError && e.code < 500) return undefined;
    throw e;
  });
  const recorded = pvc?.metadata.annotations?.[storage.UPLOAD_TOKEN] ?? '';
  const [hash, expires] = recorded.split(':');
  const ok = !!hash && hash.length === 64 && timingSafeEqual(Buffer.from(hash), Buffer.from(sha256(token)));
  if (!pvc || !ok) throw new ApiError(401, 'Unauthorized', 'the upload token is not valid (a newer one was issued, or the claim is gone): request a new one');
  if (Number(expires) < Date.now() / 1000 && !req.headers['upload-offset']) {
    // A resumed upload keeps its token; a new one must start within the token's lifetime.
    throw new ApiError(401, 'Unauthorized', 'the upload token has expired: request a new one');
  }
  const nodeName = pvc.metadata.annotations![storage.SELECTED_NODE];
  if (!nodeName)
    throw new ApiError(503, 'ServiceUnavailable', `PersistentVolumeClaim ${namespace}/${name} has no node yet: wait for the DataVolume to show UploadReady`, {
      retryAfterSeconds: 2,
    });
  const target = await agentTarget(resources, nodeName);
  const headers: Record<string, string> = { Authorization: `Bearer ${target.token}`, 'X-Upload-Mode': path.endsWith('-async') ? 'async' : 'sync' };
  for (const h of ['upload-offset', 'upload-length', 'content-length', 'content-type']) {
    const v = req.headers[h];
    if (typeof v === 'string') headers[h] = v;
  }
  if (!headers['upload-length'] && headers['content-length'] && !headers['upload-offset']) headers['upload-length'] = headers['content-length'];
  await new Promise<void>((resolve, reject) => {
    const out = httpsRequest(
      {
        host: target.host,
        port: target.port,
        method: req.method === 'HEAD' || req.method === 'GET' ? req.method : 'POST',
        path: `/v1/upload/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`,
        headers,
        ...target.tls,
      },
      (agentRes) => {
        // The agent answered before the body ended (an upload cut off for its size): close the
        // client's connection after the answer, so its sender stops instead of stalling.
        if (!req.complete) res.setHeader('Connection', 'close');
        const code = agentRes.statusCode ?? 502;
        if (code >= 400) {
          // The agent's own error body becomes a Status, like every other failure a client sees.
          const chunks: Buffer[] = [];
          agentRes.on('data', (c: Buffer) => chunks.push(c));
          agentRes.on('error', reject);
          agentRes.on('end', () => reject(agentRefusal('upload', code, Buffer.concat(chunks).toString('utf8'), nodeName)));
          return;
        }
        res.writeHead(
          code,
          Object.fromEntries(Object.entries(agentRes.headers).filter(([k]) => ['content-type', 'content-length', 'upload-offset'].includes(k))) as Record<
            string,
            string
          >,
        );
        agentRes.pipe(res);
        agentRes.on('end', resolve);
        agentRes.on('error', reject);
      },
    );
    out.on('error', (e) => reject(new ApiError(502, 'InternalError', `cannot reach the agent of node ${nodeName}: ${e.message}`)));
    // A client that goes away mid-upload: the agent keeps what arrived for a resume.
    req.on('aborted', () => out.destroy());
    if (req.method === 'HEAD' || req.method === 'GET') {
      req.resume();
      out.end();
    } else req.pipe(out);
  });
}

/** The Secret agents check the server's calls against; made once on a fresh install. */
export function agentAuthSecret(): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    type: 'Opaque',
    metadata: { name: storage.AGENT_AUTH_SECRET, namespace: 'kube-system' },
    data: { token: Buffer.from(randomBytes(32).toString('base64url')).toString('base64') },
  };
}
