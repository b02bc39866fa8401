/**
 * @vessel/tls: the TLS pieces the API server and the agent share, kept apart from both so
 * neither imports the other: certificates made with the openssl command on first start (the
 * server's CA and serving certificate; an agent's self-signed one, pinned by its SHA-256
 * fingerprint instead of a shared CA), the `--listen HOST:PORT` parser and QEMU's TLS credentials
 * directories (with the DH group every QEMU TLS server endpoint needs).
 */
export {
  checkPinned,
  ensureMigrationCerts,
  ensureSelfSignedCert,
  ensureServingCerts,
  type MigrationCerts,
  type SelfSignedCert,
  type ServingCerts,
} from './certs.ts';
export { parseListen, type ListenAddress } from './listen.ts';
export { FFDHE2048_PEM } from './dh.ts';
export { qemuTlsFiles, writeQemuTlsDir, type CertAndKey, type QemuTlsCreds } from './qemu-creds.ts';
