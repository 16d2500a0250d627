/** Pieces every storage driver shares: error types, size checks, durable file helpers, safe progress. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import type { BackupProgress } from './driver.js';

/** The subset of a pino logger the drivers use. */
export interface DriverLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** The snapshot to act on does not exist on the volume; retrying will not help. */
export class SnapshotNotFoundError extends Error {
  override name = 'SnapshotNotFoundError';
}

/** A volume image already exists where a new one would be created; it is never overwritten. */
export class VolumeExistsError extends Error {
  override name = 'VolumeExistsError';
}

export function notFound(tag: string, volumePath: string): SnapshotNotFoundError {
  return new SnapshotNotFoundError(`snapshot ${tag} not found on ${volumePath}`);
}

/** Image sizes are whole 512-byte sectors: refuse others instead of letting the tools round them silently. */
export function assertSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw new RangeError(`size must be a positive multiple of 512 bytes, got ${sizeBytes}`);
  }
}

/** Wraps an error with context, keeping its name so callers can still tell SnapshotNotFoundError/AbortError apart. */
export function withContext(err: unknown, context: string): Error {
  const e = err instanceof Error ? err : new Error(String(err));
  const wrapped = new Error(`${context}: ${e.message}`, { cause: e });
  wrapped.name = e.name;
  return wrapped;
}

/** A throwing progress callback runs inside a stream handler, where it would crash the process; log it instead. */
export function safeProgress(cb: ((p: BackupProgress) => void) | undefined, log: DriverLogger): (p: BackupProgress) => void {
  return (p) => {
    try {
      cb?.(p);
    } catch (err) {
      log.warn({ err }, 'backup progress callback threw');
    }
  };
}

/** fsync a file or directory, so a rename or a write survives a crash. */
export async function fsyncPath(p: string): Promise<void> {
  const fh = await open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Hex sha256 of a file's bytes, streamed. */
export async function sha256File(file: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { signal })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export function errCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}
