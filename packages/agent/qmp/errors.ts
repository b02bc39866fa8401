/**
 * Errors of the QMP client. Callers branch on `code`, a stable string, and may copy `message`
 * into VMI conditions and Events as it is, so every message says what failed and what to do.
 */

export type QmpErrorCode =
  | 'CommandFailed' // QEMU answered the command with an error object (see errorClass/desc)
  | 'Timeout' // no answer (or no awaited event) within the time limit
  | 'Closed' // the socket closed (QEMU exited, or close() was called) before the answer came
  | 'ConnectFailed' // the socket could not be reached, or no greeting came
  | 'ProtocolError'; // the peer does not speak QMP (bad greeting, capabilities refused)

/** Base class of every error the QMP client throws. */
export class QmpClientError extends Error {
  readonly code: QmpErrorCode;
  constructor(code: QmpErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QmpClientError';
    this.code = code;
  }
}

/** QEMU refused or failed a command: `{"error": {"class": ..., "desc": ...}}`. */
export class QmpError extends QmpClientError {
  readonly command: string;
  /** QMP error class, e.g. 'GenericError', 'CommandNotFound', 'DeviceNotFound'. */
  readonly errorClass: string;
  /** QEMU's own description, which usually names the problem precisely. */
  readonly desc: string;
  constructor(command: string, errorClass: string, desc: string) {
    super('CommandFailed', `QMP ${command} failed: ${desc} (${errorClass})`);
    this.name = 'QmpError';
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/** No reply within the command's time limit. The command may still complete inside QEMU. */
export class QmpTimeoutError extends QmpClientError {
  readonly command: string;
  readonly timeoutMs: number;
  constructor(command: string, timeoutMs: number, what = 'got no answer') {
    super(
      'Timeout',
      `QMP ${command} ${what} within ${timeoutMs} ms: QEMU is hung or very busy (TCG on a loaded host is slow); ` +
        `query the VM again before retrying, check qemu.log in its run directory, or kill the VM`,
    );
    this.name = 'QmpTimeoutError';
    this.command = command;
    this.timeoutMs = timeoutMs;
  }
}

/** The connection ended while a command waited, or a command was sent after it ended. */
export class QmpClosedError extends QmpClientError {
  readonly command: string;
  constructor(command: string, socketPath: string, reason: string) {
    super(
      'Closed',
      `QMP ${command} not answered: the connection to ${socketPath} is closed (${reason}); ` +
        `if QEMU exited see qemu.log in the run directory, otherwise reconnect`,
    );
    this.name = 'QmpClosedError';
    this.command = command;
  }
}

/** connect() could not reach the socket or got no greeting. */
export class QmpConnectError extends QmpClientError {
  readonly socketPath: string;
  constructor(socketPath: string, message: string, options?: { cause?: unknown }) {
    super('ConnectFailed', message, options);
    this.name = 'QmpConnectError';
    this.socketPath = socketPath;
  }
}

/** The peer answered, but not like QEMU's QMP. */
export class QmpProtocolError extends QmpClientError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ProtocolError', message, options);
    this.name = 'QmpProtocolError';
  }
}
