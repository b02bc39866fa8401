/**
 * Errors of the guest agent client. Callers branch on `code`; messages say what failed and what
 * to do, so they can go into Events and conditions as they are.
 */

export type QgaErrorCode =
  | 'CommandFailed' // the agent answered with an error object (see errorClass/desc)
  | 'Timeout' // no answer within the time limit: no agent in the guest, the guest is paused or slow
  | 'Closed' // the socket closed (QEMU exited, or close() was called) before the answer came
  | 'ConnectFailed'; // the socket could not be reached (QEMU not running, no channel)

/** Base class of every error the QGA client throws. */
export class QgaClientError extends Error {
  readonly code: QgaErrorCode;
  constructor(code: QgaErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QgaClientError';
    this.code = code;
  }
}

/** The agent refused or failed a command: `{"error": {"class": ..., "desc": ...}}`. */
export class QgaError extends QgaClientError {
  readonly command: string;
  /** e.g. 'GenericError', 'CommandNotFound', 'CommandDisabled'. */
  readonly errorClass: string;
  readonly desc: string;
  constructor(command: string, errorClass: string, desc: string) {
    super('CommandFailed', `guest agent ${command} failed: ${desc} (${errorClass})`);
    this.name = 'QgaError';
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/** No answer in time. The command may still run in the guest later (the stream is resynced before the next one). */
export class QgaTimeoutError extends QgaClientError {
  readonly command: string;
  readonly timeoutMs: number;
  constructor(command: string, timeoutMs: number) {
    super(
      'Timeout',
      `guest agent ${command} got no answer within ${timeoutMs} ms: the guest runs no qemu-guest-agent on ` +
        `org.qemu.guest_agent.0, is paused or very slow (TCG on a loaded host), or another client holds ` +
        `qga.sock (QEMU serves one at a time)`,
    );
    this.name = 'QgaTimeoutError';
    this.command = command;
    this.timeoutMs = timeoutMs;
  }
}

/** The connection ended while a command waited, or a command was sent after it ended. */
export class QgaClosedError extends QgaClientError {
  readonly command: string;
  constructor(command: string, socketPath: string, reason: string) {
    super('Closed', `guest agent ${command} not answered: the connection to ${socketPath} is closed (${reason})`);
    this.name = 'QgaClosedError';
    this.command = command;
  }
}

/** connect() could not reach the socket. */
export class QgaConnectError extends QgaClientError {
  readonly socketPath: string;
  constructor(socketPath: string, message: string, options?: { cause?: unknown }) {
    super('ConnectFailed', message, options);
    this.name = 'QgaConnectError';
    this.socketPath = socketPath;
  }
}
