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
  BACKUP_CORRUPT: { status: 409, description: 'a backup file the restore reads does not match its recorded checksum (or its chain is broken); nothing was created or changed' },
  HYPERVISOR_MISMATCH: { status: 409, description: 'the resources belong to different hypervisors' },
  VOLUME_ATTACHED: { status: 409, description: 'the volume is attached to a VM' },
  VOLUME_NOT_ATTACHED: { status: 409, description: 'the volume is not attached to that VM' },
  ISO_ALREADY_ATTACHED: { status: 409, description: 'the VM already has an ISO attached' },
  NO_HOST: { status: 409, description: 'no host can run the VM' },
  HYPERVISOR_ERROR: { status: 409, description: 'the hypervisor refused or failed the VM action; the message has its reason and the VM is as the response\'s details say' },
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
  SERVICE_UNAVAILABLE: { status: 503, description: 'the service is stopping, or a dependency (database, Temporal) is not answering; retry after Retry-After seconds' },
  TEMPORAL_UNAVAILABLE: { status: 503, description: 'Temporal or its workers did not answer in time; retry' },
  HYPERVISOR_UNAVAILABLE: { status: 503, description: 'the VM\'s host cannot be reached (libvirt is not running there, or the host is not connected); nothing changed' },
} as const satisfies Record<string, { status: number; description: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export const ERROR_CODE_NAMES = Object.keys(ERROR_CODES) as [ErrorCode, ...ErrorCode[]];

/**
 * Each code in the user's words: the one sentence the web page (and any client) shows first, above the API's
 * full message. Kept next to ERROR_CODES so that a new code cannot ship without its sentence (the type requires
 * every code). Served to the page as /ui/error-codes.json.
 */
export const ERROR_SENTENCES = {
  INVALID_INPUT: 'Some of the values entered are not valid.',
  MALFORMED_JSON: 'The request could not be read.',
  MALFORMED_REQUEST: 'The request could not be read.',
  UNAUTHORIZED: 'Your API key was not accepted. Sign in again.',
  FORBIDDEN: 'Only an administrator can do this.',
  NOT_FOUND: 'It no longer exists, or it belongs to another account.',
  METHOD_NOT_ALLOWED: 'This operation is not offered here.',
  REQUEST_TIMEOUT: 'The request took too long to arrive. Check the connection and try again.',
  OPERATION_NOT_ALLOWED_DURING_BACKUP: 'Not possible while a snapshot is being backed up. Try again when the backup has finished.',
  VOLUME_BUSY: 'The volume is busy (being moved, resized or created). Try again when it is ready.',
  IMAGE_BUSY: 'The disk was busy and nothing was changed. Try again.',
  INVALID_STATE: 'Not possible in its current state.',
  IDEMPOTENCY_KEY_REUSED: 'This request was already used for something else.',
  SNAPSHOT_CREATION_FAILED: 'The snapshot could not be created on primary storage.',
  SNAPSHOT_BACKUP_FAILED: 'The snapshot was created, but backing it up failed.',
  PRIMARY_SNAPSHOT_MISSING: 'The snapshot is no longer on primary storage, so the volume cannot be reverted to it. Create a new volume from its backup instead.',
  BACKUP_MISSING: 'The snapshot has no usable backup.',
  BACKUP_CORRUPT: 'The snapshot\'s backup is damaged, so nothing was restored.',
  HYPERVISOR_MISMATCH: 'These belong to different hypervisors.',
  VOLUME_ATTACHED: 'The volume is attached to a VM. Detach it first.',
  VOLUME_NOT_ATTACHED: 'The volume is not attached to that VM.',
  ISO_ALREADY_ATTACHED: 'The VM already has an ISO attached. Detach it first.',
  NO_HOST: 'No host can run this VM right now.',
  HYPERVISOR_ERROR: 'The host could not do this to the VM. The message says why.',
  NO_STORAGE_POOL: 'No storage is configured for this hypervisor.',
  ACCOUNT_EXISTS: 'An account with that name already exists.',
  VOLUME_OPERATION_ABANDONED: 'The volume operation took too long and was undone. Try again.',
  CONCURRENT_UPDATE: 'Someone changed it at the same time. Try again.',
  CONFLICT: 'It conflicts with something that already exists.',
  LAST_API_KEY: 'This is the account\'s last working API key, so it cannot be revoked. Create another key first.',
  API_KEY_IN_USE: 'A key cannot revoke itself. Sign in with another key of the account to revoke this one.',
  PAYLOAD_TOO_LARGE: 'The request is too large.',
  UNSUPPORTED_MEDIA_TYPE: 'The request could not be read.',
  IDEMPOTENCY_KEY_MISMATCH: 'This request was already sent with different values. Start it again as a new request.',
  RATE_LIMITED: 'Too many requests in a short time. Wait a moment and try again.',
  TOO_MANY_STREAMS: 'Too many live views are open for this account. Close another tab or window and try again.',
  INTERNAL: 'Something went wrong on the server. The operators can find the cause in the log.',
  NOT_IMPLEMENTED: 'This operation is not available here.',
  SERVICE_UNAVAILABLE: 'The service is unavailable right now; retrying.',
  TEMPORAL_UNAVAILABLE: 'The service is unavailable right now; retrying.',
  HYPERVISOR_UNAVAILABLE: 'The VM\'s host cannot be reached right now. Nothing was changed.',
} as const satisfies Record<ErrorCode, string>;

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
    readonly code: Extract<ErrorCode, 'SERVICE_UNAVAILABLE' | 'TEMPORAL_UNAVAILABLE' | 'HYPERVISOR_UNAVAILABLE'>,
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
