/**
 * Container image URLs as CDI writes them (`docker://host[:port]/repository[:tag|@digest]`),
 * shared by the node's registry importer and the DataImportCron's digest poll, with Docker's
 * rules for short names: "docker://fedora" is docker.io/library/fedora:latest.
 */

export interface ImageRef {
  /** host[:port] as written in the URL; "docker.io" for Docker Hub short names. */
  registry: string;
  repository: string;
  /** A tag, or a digest "sha256:<hex>". */
  reference: string;
}

/** A URL that is not one; the message says how to write it. */
export class ImageUrlError extends Error {
  readonly code = 'InvalidImageUrl';
  override name = 'ImageUrlError';
}

export const IMAGE_DIGEST_RE = /^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$/;
const REPO_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$/;

/** Splits an image URL into registry, repository and tag or digest; throws ImageUrlError. */
export function parseImageUrl(url: string): ImageRef {
  const bad = (why: string) =>
    new ImageUrlError(`registry URL "${url}" ${why}: write it as docker://host[:port]/repository[:tag] or docker://host[:port]/repository@sha256:<digest>`);
  if (typeof url !== 'string' || !url.startsWith('docker://')) {
    throw bad(/^oci-archive:/.test(String(url)) ? 'is an oci-archive, which Vessel does not import' : 'does not start with docker://');
  }
  let rest = url.slice('docker://'.length);
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!IMAGE_DIGEST_RE.test(digest)) throw bad(`has digest "${digest}", not sha256:<64 lowercase hex digits>`);
  }
  if (rest === '' || rest.includes('://')) throw bad('names no image');
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  // Docker's rule: the first component is a host only if it looks like one.
  const hasHost = slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['));
  let registry = hasHost ? first : 'docker.io';
  let path = hasHost ? rest.slice(slash + 1) : rest;
  const lastSlash = path.lastIndexOf('/');
  const colon = path.lastIndexOf(':');
  let tag: string | undefined;
  if (colon > lastSlash) {
    tag = path.slice(colon + 1);
    path = path.slice(0, colon);
    if (!TAG_RE.test(tag)) throw bad(`has tag "${tag}", which is not a valid tag`);
  }
  const hm = HOST_RE.exec(registry);
  if (!hm || (hm[1] !== undefined && (Number(hm[1]) < 1 || Number(hm[1]) > 65535))) throw bad(`has "${registry}", which is not a host[:port]`);
  if (registry === 'index.docker.io') registry = 'docker.io';
  if (registry === 'docker.io' && path !== '' && !path.includes('/')) path = `library/${path}`;
  if (path === '' || path.length > 255 || !path.split('/').every((c) => REPO_COMPONENT.test(c))) {
    throw bad(`has repository "${path}": use lowercase letters, digits and . _ - separated by /`);
  }
  return { registry, repository: path, reference: digest ?? tag ?? 'latest' };
}
