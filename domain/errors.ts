/** Errors the service raises on purpose; the API maps each to its HTTP status and error code. */

/**
 * Every error code the API answers with, once: its HTTP status and what it means. The OpenAPI document lists
 * them (api/schemas/common.ts), and every error class below takes its code from here.
 */
export const ERROR_CODES = {
  INVALID_INPUT: { status: 400, description: 'a field is missing or invalid; details.fields names each' },
  MALFORMED_JSON: { status: 400, description: 'the request body is not JSON' },
  MALFORMED_REQUEST: { status: 400, description: 'the request cannot be read' },
  UNAUTHORIZED: { status: 401, description: 'missing or invalid API key' },
  FORBIDDEN: { status: 403, description: 'the operation needs an admin account' },
  NOT_FOUND: { status: 404, description: 'no such resource (or it belongs to another account)' },
  METHOD_NOT_ALLOWED: { status: 405, description: 'the path does not take this method; Allow lists those it does' },
  REQUEST_TIMEOUT: { status: 408, description: 'the request body did not arrive in time' },
  OPERATION_NOT_ALLOWED_DURING_BACKUP: { status: 409, description: 'the parallel-operation policy refuses it while a snapshot is in flight' },
  VOLUME_BUSY: { status: 409, description: 'the volume is being migrated, resized or created; retry when it is Ready' },
  IMAGE_BUSY: { status: 409, description: 'another process held the volume image too long; nothing changed, retry' },
  INVALID_STATE: { status: 409, description: 'the resource is not in a state that allows the operation' },
  IDEMPOTENCY_KEY_REUSED: { status: 409, description: 'the Idempotency-Key was used for a snapshot of another volume' },
  SNAPSHOT_CREATION_FAILED: { status: 409, description: 'creating the snapshot on primary storage failed' },
  SNAPSHOT_BACKUP_FAILED: { status: 409, description: 'the synchronous backup failed after its last attempt' },
  PRIMARY_SNAPSHOT_MISSING: { status: 409, description: 'the snapshot no longer exists on primary storage' },
  BACKUP_MISSING: { status: 409, description: 'the snapshot has no usable backup' },
  HYPERVISOR_MISMATCH: { status: 409, description: 'the resources belong to different hypervisors' },
  VOLUME_ATTACHED: { status: 409, description: 'the volume is attached to a VM' },
  VOLUME_NOT_ATTACHED: { status: 409, description: 'the volume is not attached to that VM' },
  ISO_ALREADY_ATTACHED: { status: 409, description: 'the VM already has an ISO attached' },
  NO_HOST: { status: 409, description: 'no host can run the VM' },
  NO_STORAGE_POOL: { status: 409, description: 'no storage pool is configured for the hypervisor' },
  ACCOUNT_EXISTS: { status: 409, description: 'an account with that name exists' },
  VOLUME_OPERATION_ABANDONED: { status: 409, description: 'the volume operation took too long and was undone; retry' },
  CONCURRENT_UPDATE: { status: 409, description: 'another request changed the resource at the same time; retry' },
  CONFLICT: { status: 409, description: 'the request conflicts with existing data' },
  LAST_API_KEY: { status: 409, description: 'the account\'s last live API key cannot be revoked; create another first' },
  API_KEY_IN_USE: { status: 409, description: 'a key cannot revoke itself; revoke it with another key' },
  PAYLOAD_TOO_LARGE: { status: 413, description: 'the request body is too large' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, description: 'send Content-Type: application/json' },
  IDEMPOTENCY_KEY_MISMATCH: { status: 422, description: 'the Idempotency-Key was used with a different request body (name, asyncBackup); use a new key' },
  RATE_LIMITED: { status: 429, description: 'too many requests with this API key; retry after Retry-After seconds' },
  TOO_MANY_STREAMS: { status: 429, description: 'the account has as many event streams open as allowed; close one or retry after Retry-After seconds' },
  INTERNAL: { status: 500, description: 'an unexpected error; the log has its cause' },
  NOT_IMPLEMENTED: { status: 501, description: 'this process does not offer the operation' },
  SERVICE_UNAVAILABLE: { status: 503, description: 'the service is stopping; retry after Retry-After seconds' },
  TEMPORAL_UNAVAILABLE: { status: 503, description: 'Temporal or its workers did not answer in time; retry' },
} as const satisfies Record<string, { status: number; description: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export const ERROR_CODE_NAMES = Object.keys(ERROR_CODES) as [ErrorCode, ...ErrorCode[]];


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
    readonly code: ErrorCode,
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

/** An Idempotency-Key sent again with another request body: 422, as the IETF draft and Stripe answer. */
export class IdempotencyKeyMismatchError extends Error {
  override readonly name = 'IdempotencyKeyMismatchError';
  readonly code = 'IDEMPOTENCY_KEY_MISMATCH';
  constructor(readonly snapshotId: string) {
    super('this Idempotency-Key was used with a different request (volume, name or asyncBackup); use a new key for a new request');
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
    readonly code: Extract<ErrorCode, 'SERVICE_UNAVAILABLE' | 'TEMPORAL_UNAVAILABLE'>,
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
