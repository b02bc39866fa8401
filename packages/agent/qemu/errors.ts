/**
 * Errors of the VM process layer (starting, finding and watching QEMU processes). Callers
 * branch on `code`, a stable string, and copy `message` into VMI conditions and Events as it
 * is, so every message says what went wrong and what the user can do about it.
 */

export type QemuProcessErrorCode =
  | 'LaunchFailed' // QEMU exited during startup; the message carries its own reason
  | 'StartTimeout' // QEMU neither finished starting nor failed in time, or QMP never answered
  | 'AlreadyRunning' // a live QEMU already owns this run directory
  | 'InvalidRunDir' // the run directory cannot hold QEMU's sockets (path too long, comma)
  | 'InvalidArgument' // argv holds options the process layer sets itself
  | 'SerialTimeout' // the expected serial output did not appear in time
  | 'Exited'; // QEMU exited while we waited for its serial output

export class QemuProcessError extends Error {
  readonly code: QemuProcessErrorCode;
  constructor(code: QemuProcessErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QemuProcessError';
    this.code = code;
  }
}

/** QEMU did not start. Nothing of it is left running when this is thrown. */
export class QemuLaunchError extends QemuProcessError {
  /** QEMU's stderr (and stdout) from this launch, as far as it was written. */
  readonly stderr: string;
  /** Exit code of the launching QEMU process; null when killed or never started. */
  readonly exitCode: number | null;
  constructor(code: 'LaunchFailed' | 'StartTimeout', message: string, stderr: string, exitCode: number | null, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'QemuLaunchError';
    this.stderr = stderr;
    this.exitCode = exitCode;
  }
}

/**
 * The first non-empty line of QEMU's stderr that is not a warning (warnings precede the
 * error that stopped it), without the "qemu-system-x86_64: " prefix.
 */
export function firstQemuLine(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim().replace(/^qemu-system-[\w-]+:\s*/, ''))
    .filter((l) => l.length > 0);
  return lines.find((l) => !/^warning:/i.test(l)) ?? lines[0] ?? '';
}
