/**
 * @vessel/tls: the TLS pieces the API server and the agent share, kept apart from both so
 * neither imports the other: certificates made with the openssl command on first start (the
 * server's CA and serving certificate; an agent's self-signed one, pinned by its SHA-256
 * fingerprint instead of a shared CA), the agents' migration CAs rotated before they expire, the `--listen HOST:PORT` parser and QEMU's TLS credentials
 * directories (with the DH group every QEMU TLS server endpoint needs).
 */
export { checkPinned, ensureSelfSignedCert, ensureServingCerts, type SelfSignedCert, type ServingCerts } from './certs.ts';
export {
  DEFAULT_MIGRATION_CERT_LIFETIMES,
  MigrationCa,
  migrationCertLifetimes,
  rotationStep,
  type CertWindow,
  type MigrationCaOptions,
  type MigrationCertLifetimes,
  type MigrationCerts,
  type RotationState,
  type RotationStep,
} from './migration-ca.ts';
export { parseListen, type ListenAddress } from './listen.ts';
export { FFDHE2048_PEM } from './dh.ts';
export { qemuTlsFiles, writeQemuTlsDir, writeQemuTlsSet, type CertAndKey, type QemuTlsCreds } from './qemu-creds.ts';
