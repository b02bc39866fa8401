/**
 * What every command shares: the global flags (--kubeconfig, --context, -n) and, built on
 * first use so commands that need no server (kubeconfig, server, token) never load one, the
 * Client and the namespace to work in.
 */
import type { Command } from 'commander';
import { Client } from '@vessel/client';

export interface GlobalOptions {
  kubeconfig?: string;
  context?: string;
  namespace?: string;
}

export class CliContext {
  private cachedClient?: Client;
  constructor(readonly globals: GlobalOptions) {}

  /** The client for the kubeconfig chosen by --kubeconfig, $KUBECONFIG or the defaults. */
  client(): Client {
    this.cachedClient ??= Client.fromKubeconfig(
      { explicit: this.globals.kubeconfig, context: this.globals.context },
      { userAgent: 'vessel-cli', onWarning: (message) => process.stderr.write(`Warning: ${message}\n`) },
    );
    return this.cachedClient;
  }

  /** -n if given, else the kubeconfig context's namespace, else 'default'. */
  namespace(): string {
    return this.globals.namespace ?? this.client().namespace;
  }

  /** Whether -n was given (apply refuses a manifest whose namespace differs from it). */
  get namespaceGiven(): boolean {
    return this.globals.namespace !== undefined;
  }
}

/** The context for a command's action (`cmd` is the last argument commander passes). */
export function contextOf(cmd: Command): CliContext {
  return new CliContext(cmd.optsWithGlobals<GlobalOptions>());
}

/** Writes to stdout. */
export function out(text: string): void {
  process.stdout.write(text);
}

/** Writes to stderr (notices like "No resources found" that must not pollute piped output). */
export function note(text: string): void {
  process.stderr.write(text);
}
