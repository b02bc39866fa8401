/**
 * Finding and reading a kubeconfig: which file (flag, $KUBECONFIG, Vessel's data dirs,
 * ~/.kube/config), and what the chosen context says (server, CA, token, namespace).
 * Only the parts Vessel's client uses are read; exec/auth-provider plugins are not supported.
 */
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { ClientError } from './errors.ts';

/** Where `vessel up` / `vessel server` keep their data when run as root and no dir is given. */
export const SYSTEM_DATA_DIR = '/var/lib/vessel';

/** Everything needed to talk to one server, resolved from one kubeconfig context. */
export interface ClusterConfig {
  /** The kubeconfig file this came from ('' when built in code). */
  path: string;
  context: string;
  /** Base URL, e.g. https://127.0.0.1:6443 (no trailing slash). */
  server: string;
  /** PEM of the CA that signed the server's certificate; undefined = the system CAs. */
  caPem?: string;
  insecureSkipTlsVerify: boolean;
  /** Name to check the server certificate against, when it differs from the URL's host. */
  tlsServerName?: string;
  token?: string;
  clientCertPem?: string;
  clientKeyPem?: string;
  /** The context's namespace, or 'default'. */
  namespace: string;
}

export interface FindKubeconfigOptions {
  /** The --kubeconfig flag. */
  explicit?: string;
  /** Defaults to process.env. */
  env?: Record<string, string | undefined>;
  /** Defaults to os.homedir(). */
  home?: string;
}

/** The default data directory: $VESSEL_DATA_DIR, else /var/lib/vessel. */
export function defaultDataDir(env: Record<string, string | undefined> = process.env): string {
  return env.VESSEL_DATA_DIR || SYSTEM_DATA_DIR;
}

/** The files tried when nothing is given, in order. */
export function defaultKubeconfigPaths(env: Record<string, string | undefined> = process.env, home = homedir()): string[] {
  const paths: string[] = [];
  if (env.VESSEL_DATA_DIR) paths.push(join(env.VESSEL_DATA_DIR, 'kubeconfig'));
  paths.push(join(SYSTEM_DATA_DIR, 'kubeconfig'));
  paths.push(join(home, '.kube', 'config'));
  return paths;
}

/**
 * Picks the kubeconfig file: --kubeconfig (must exist), else the first existing file in
 * $KUBECONFIG (kubectl merges them; Vessel uses the first), else the defaults.
 */
export function findKubeconfig(opts: FindKubeconfigOptions = {}): string {
  const env = opts.env ?? process.env;
  if (opts.explicit) {
    const path = resolve(opts.explicit);
    if (!existsSync(path)) throw new ClientError('NoKubeconfig', `kubeconfig ${path} does not exist: check the --kubeconfig path`);
    return path;
  }
  const fromEnv = (env.KUBECONFIG ?? '').split(':').filter(Boolean);
  if (fromEnv.length > 0) {
    const found = fromEnv.map((p) => resolve(p)).find((p) => existsSync(p));
    if (!found) throw new ClientError('NoKubeconfig', `none of the files in $KUBECONFIG exist (${fromEnv.join(':')}): fix or unset KUBECONFIG`);
    return found;
  }
  const found = defaultKubeconfigPaths(env, opts.home ?? homedir()).find((p) => existsSync(p));
  if (!found) {
    throw new ClientError('NoKubeconfig', 'no kubeconfig found: run `vessel up` (or `vessel server --data-dir DIR`), or pass --kubeconfig, or set KUBECONFIG');
  }
  return found;
}

// The subset of the kubeconfig file format read here (kubectl's field names).
interface NamedCluster {
  name: string;
  cluster?: Record<string, unknown>;
}
interface NamedUser {
  name: string;
  user?: Record<string, unknown>;
}
interface NamedContext {
  name: string;
  context?: { cluster?: string; user?: string; namespace?: string };
}
interface KubeconfigDoc {
  clusters?: NamedCluster[];
  users?: NamedUser[];
  contexts?: NamedContext[];
  'current-context'?: string;
}

/** Reads one kubeconfig file and resolves a context (default: current-context). */
export function loadKubeconfigFile(path: string, context?: string): ClusterConfig {
  let text: string;
  try {
    accessSync(path, constants.R_OK);
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const hint = code === 'EACCES' ? `permission denied: run as root, or copy it to your user (sudo vessel kubeconfig > ~/.kube/config)` : (e as Error).message;
    throw new ClientError('BadKubeconfig', `cannot read kubeconfig ${path}: ${hint}`, { cause: e });
  }
  return parseKubeconfig(text, path, context);
}

/** Finds the kubeconfig (see findKubeconfig) and resolves its context. */
export function loadKubeconfig(opts: FindKubeconfigOptions & { context?: string } = {}): ClusterConfig {
  return loadKubeconfigFile(findKubeconfig(opts), opts.context);
}

/** Resolves a context of kubeconfig text; relative file references are relative to `path`. */
export function parseKubeconfig(text: string, path: string, context?: string): ClusterConfig {
  const bad = (why: string) => new ClientError('BadKubeconfig', `kubeconfig ${path}: ${why}`);
  let doc: KubeconfigDoc;
  try {
    doc = (parseYaml(text) ?? {}) as KubeconfigDoc;
  } catch (e) {
    throw bad(`not valid YAML: ${(e as Error).message}`);
  }
  if (typeof doc !== 'object' || Array.isArray(doc)) throw bad('not a kubeconfig (expected a YAML mapping)');

  const contextName = context || doc['current-context'];
  if (!contextName) throw bad('no current-context is set: pass --context or set current-context');
  const ctx = (doc.contexts ?? []).find((c) => c.name === contextName)?.context;
  if (!ctx) throw bad(`context "${contextName}" is not defined`);
  const cluster = (doc.clusters ?? []).find((c) => c.name === ctx.cluster)?.cluster;
  if (!cluster) throw bad(`cluster "${ctx.cluster ?? ''}" (of context "${contextName}") is not defined`);
  const user = (doc.users ?? []).find((u) => u.name === ctx.user)?.user ?? {};

  const server = str(cluster.server);
  if (!server) throw bad(`cluster "${ctx.cluster}" has no server`);
  if (!/^https?:\/\//.test(server)) throw bad(`server "${server}" is not an http(s) URL`);

  const base = dirname(path);
  // Inline `-data` fields are base64; file fields name PEM files.
  const pem = (dataField: string, fileField: string, from: Record<string, unknown>): string | undefined => {
    const data = str(from[dataField]);
    if (data) return Buffer.from(data, 'base64').toString('utf8');
    const file = str(from[fileField]);
    if (!file) return undefined;
    const full = isAbsolute(file) ? file : join(base, file);
    try {
      return readFileSync(full, 'utf8');
    } catch (e) {
      throw bad(`cannot read ${fileField} ${full}: ${(e as Error).message}`);
    }
  };

  let token = str(user.token);
  const tokenFile = str(user.tokenFile);
  if (!token && tokenFile) {
    const full = isAbsolute(tokenFile) ? tokenFile : join(base, tokenFile);
    try {
      token = readFileSync(full, 'utf8').trim();
    } catch (e) {
      throw bad(`cannot read tokenFile ${full}: ${(e as Error).message}`);
    }
  }

  return {
    path,
    context: contextName,
    server: server.replace(/\/+$/, ''),
    caPem: pem('certificate-authority-data', 'certificate-authority', cluster),
    insecureSkipTlsVerify: cluster['insecure-skip-tls-verify'] === true,
    tlsServerName: str(cluster['tls-server-name']),
    token,
    clientCertPem: pem('client-certificate-data', 'client-certificate', user),
    clientKeyPem: pem('client-key-data', 'client-key', user),
    namespace: ctx.namespace || 'default',
  };
}

function str(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}
