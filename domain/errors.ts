/** Errors the service raises on purpose; the API maps each to its HTTP status and error code. */

export class NotFoundError extends Error {
  override readonly name = 'NotFoundError';
  readonly code = 'NOT_FOUND';
  constructor(readonly resource: string, readonly id: string) {
    super(`${resource} ${id} not found`);
  }
}

export class ConflictError extends Error {
  override readonly name = 'ConflictError';
  constructor(
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

/** The parallel-operation policy refused an operation (docs/design.md §6). */
export class OperationNotAllowedError extends ConflictError {
  constructor(message: string, readonly snapshotId: string, readonly volumeId: string) {
    super('OPERATION_NOT_ALLOWED_DURING_BACKUP', message, { snapshotId, volumeId });
  }
}

/** The volume's storage work (migrate, resize, creation) is in progress: retry once it is Ready. */
export class VolumeBusyError extends ConflictError {
  constructor(message: string, readonly volumeId: string, readonly state: string) {
    super('VOLUME_BUSY', message, { volumeId, state });
  }
}

export class ValidationError extends Error {
  override readonly name = 'ValidationError';
  readonly code = 'INVALID_INPUT';
  constructor(message: string, readonly fields: Record<string, string> = {}) {
    super(message);
  }
}

/** Creating the snapshot on primary storage failed: the caller gets the error, as before the feature. */
export class SnapshotCreationFailedError extends Error {
  override readonly name = 'SnapshotCreationFailedError';
  readonly code = 'SNAPSHOT_CREATION_FAILED';
  constructor(message: string, readonly snapshotId: string) {
    super(message);
  }
}

/**
 * A dependency (Temporal, its workers) did not answer in time: nothing the caller did wrong, worth a retry.
 * The API answers 503 with Retry-After.
 */
export class ServiceUnavailableError extends Error {
  override readonly name = 'ServiceUnavailableError';
  constructor(
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
    readonly retryAfterSeconds = 5,
  ) {
    super(message);
  }
}

/**
 * A storage error as users may see it: absolute paths of the servers' file systems (image store roots, temp
 * files) are shortened to their last segment, which is all a user can act on; the full text stays in the log.
 */
export function publicErrorMessage(message: string): string {
  return message.replace(/(?:\/[\w.@+-]+){2,}/g, (path) => `…/${path.slice(path.lastIndexOf('/') + 1)}`);
}
