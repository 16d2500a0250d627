import { execFile } from 'node:child_process';

/** Options for {@link run}. */
export interface RunOptions {
  /** Kills the child (SIGTERM) and rejects with an AbortError once it has exited. */
  signal?: AbortSignal;
  /** Receives stdout as it arrives (e.g. qemu-img -p progress); stdout is still collected. */
  onStdout?: (chunk: string) => void;
}

/** Output of a command that exited 0. */
export interface RunResult {
  stdout: string;
  stderr: string;
}

/** A command that failed to start, exited non-zero or was killed; `stderr` holds its trimmed stderr. */
export class CommandError extends Error {
  override name = 'CommandError';
  constructor(
    message: string,
    readonly command: string,
    readonly exitCode: number | null,
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Runs `file args` without a shell; resolves with its output when it exits 0, otherwise rejects with CommandError. */
export function run(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const command = [file, ...args].join(' ');
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(abortError(command, opts.signal));
      return;
    }
    const child = execFile(
      file,
      args,
      // Progress output of long copies can be large; 64 MiB is far above anything qemu-img prints.
      { signal: opts.signal, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const settle = (): void => {
          if (!err) return resolve({ stdout, stderr });
          if (opts.signal?.aborted) return reject(abortError(command, opts.signal));
          const code = typeof err.code === 'number' ? err.code : null;
          const how = code !== null ? `exited with code ${code}` : err.signal ? `was killed by ${err.signal}` : err.message;
          const detail = stderr.trim();
          reject(new CommandError(`${command} ${how}${detail ? `: ${detail}` : ''}`, command, code, detail, { cause: err }));
        };
        // On abort execFile calls back before the child is gone; wait for it so callers can clean up its files safely.
        if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) settle();
        else child.once('exit', settle);
      },
    );
    if (opts.onStdout) child.stdout?.on('data', (chunk: string) => opts.onStdout?.(chunk));
  });
}

function abortError(command: string, signal: AbortSignal): Error {
  const err = new Error(`${command} was aborted`, { cause: signal.reason });
  err.name = 'AbortError';
  return err;
}
