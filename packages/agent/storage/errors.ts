/**
 * Errors of the storage data plane. Callers (the DataVolume controller, the upload proxy)
 * branch on `code`, a stable string, and copy `message` into conditions and Events as it
 * is, so every message says what went wrong and what the user can do about it.
 */

export type ImportErrorCode =
  | 'BackingFileRefused' // qcow2 names a backing file: opening it would read a host file
  | 'DataFileRefused' // qcow2 with an external data file, or a vmdk with extents in other files
  | 'EncryptedRefused' // an encrypted image: we have no key and will not guess one
  | 'TooLarge' // virtual size above what the claim can hold
  | 'Corrupt' // qemu-img cannot open or check the image
  | 'ChecksumMismatch' // the downloaded bytes do not match the checksum the user gave
  | 'Truncated' // the download or the compressed stream ended early
  | 'UnsupportedFormat' // not raw, qcow2, vmdk, vpc or vhdx (after gz/xz)
  | 'HttpError' // the server answered with an error
  | 'Unreachable' // the source's host did not resolve or answer, or the egress policy refuses it (one message for all)
  | 'QemuImgFailed' // qemu-img itself failed (missing, crashed, timed out)
  | 'Aborted' // the caller's AbortSignal fired
  | 'IOError' // reading the source or writing the volume failed (permissions, I/O errors)
  | 'InvalidArgument'; // the request itself cannot be served (bad checksum syntax, bad size)

/** A refused or failed import. Nothing is left behind when one is thrown from importDisk. */
export class ImportError extends Error {
  readonly code: ImportErrorCode;
  constructor(code: ImportErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ImportError';
    this.code = code;
  }
}

/** qemu-img exited non-zero (or could not be started, or timed out). */
export class QemuImgError extends ImportError {
  readonly args: readonly string[];
  readonly exitCode: number | null;
  readonly stderr: string;
  constructor(args: readonly string[], exitCode: number | null, stderr: string, message?: string, options?: { cause?: unknown }) {
    const sub = args[0] ?? '';
    super('QemuImgFailed', message ?? `qemu-img ${sub} failed (exit ${exitCode ?? 'signal'}): ${firstLine(stderr) || 'no error output'}`, options);
    this.name = 'QemuImgError';
    this.args = args;
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

/** The first non-empty line of qemu-img's stderr, without its "qemu-img: " prefix. */
export function firstLine(stderr: string): string {
  const line =
    stderr
      .split('\n')
      .map((l) => l.trim())
      .find((l) => l.length > 0) ?? '';
  return line.replace(/^qemu-img:\s*/, '');
}
