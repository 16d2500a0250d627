import { createRoute, z } from '@hono/zod-openapi';
import { errorResponses, IdParamsSchema, jsonContent, optionalJsonBody, PageHeadersSchema } from '../../schemas/common.js';
import {
  CreateSnapshotSchema,
  CreateVolumeFromSnapshotSchema,
  IdempotencyHeadersSchema,
  SnapshotListQuerySchema,
  SnapshotSchema,
} from '../../schemas/snapshot.js';
import { VolumeSchema } from '../../schemas/volume.js';

const tags = ['Snapshots'];

/** An optional JSON body: no body means every field takes its default. */

export const create = createRoute({
  path: '/api/v1/volumes/{id}/snapshots',
  method: 'post',
  tags,
  summary: 'Take a snapshot of a volume',
  description:
    'Answers when the milestone is reached: created on primary (CreatedOnPrimary/BackingUp) with `asyncBackup: true`, ' +
    'backed up (BackedUp) without. A retry with the same `Idempotency-Key` and the same request answers 200 with the same snapshot ' +
    '(a concurrent duplicate waits for the first); the same key with another body (name, asyncBackup) is 422 IDEMPOTENCY_KEY_MISMATCH, ' +
    'with another volume 409 IDEMPOTENCY_KEY_REUSED. A key holds for `idempotency.key.ttl` seconds (default 24 h), or until its snapshot is deleted; ' +
    'after that it takes a new snapshot. ' +
    'A failed creation on primary is 409 SNAPSHOT_CREATION_FAILED; a failed synchronous backup is 409 SNAPSHOT_BACKUP_FAILED; ' +
    'both name the snapshot (in Error) in `details.snapshotId`.',
  request: { params: IdParamsSchema, headers: IdempotencyHeadersSchema, body: optionalJsonBody(CreateSnapshotSchema) },
  responses: {
    201: jsonContent(SnapshotSchema, 'The new snapshot at its milestone'),
    200: jsonContent(SnapshotSchema, 'The snapshot an earlier request with this Idempotency-Key created'),
    ...errorResponses(400, 401, 404, 409, 413, 422),
  },
});

export const list = createRoute({
  path: '/api/v1/snapshots',
  method: 'get',
  tags,
  summary: 'List snapshots, oldest first, a page at a time',
  description: 'At most `limit` (default 100, at most 1000); when more follow, `X-Next-Cursor` holds the `after` of the next page and `Link` its URL.',
  request: { query: SnapshotListQuerySchema },
  responses: { 200: { ...jsonContent(z.array(SnapshotSchema), 'The snapshots'), headers: PageHeadersSchema }, ...errorResponses(400, 401) },
});

export const get = createRoute({
  path: '/api/v1/snapshots/{id}',
  method: 'get',
  tags,
  summary: 'Get a snapshot with its backup progress and store references',
  request: { params: IdParamsSchema },
  responses: { 200: jsonContent(SnapshotSchema, 'The snapshot'), ...errorResponses(400, 401, 404) },
});

export const remove = createRoute({
  path: '/api/v1/snapshots/{id}',
  method: 'delete',
  tags,
  summary: 'Delete a BackedUp or Error snapshot (refused while it is in flight)',
  request: { params: IdParamsSchema },
  responses: { 200: jsonContent(SnapshotSchema, 'The snapshot, Destroyed'), ...errorResponses(400, 401, 404, 409) },
});

export const revert = createRoute({
  path: '/api/v1/snapshots/{id}/revert',
  method: 'post',
  tags,
  summary: 'Revert the volume to a BackedUp snapshot (its VM must be stopped)',
  request: { params: IdParamsSchema },
  responses: { 200: jsonContent(VolumeSchema, 'The reverted volume'), ...errorResponses(400, 401, 404, 409) },
});

export const createVolume = createRoute({
  path: '/api/v1/snapshots/{id}/volumes',
  method: 'post',
  tags,
  summary: 'Create a new volume from a BackedUp snapshot\'s backup',
  request: { params: IdParamsSchema, body: optionalJsonBody(CreateVolumeFromSnapshotSchema) },
  responses: { 201: jsonContent(VolumeSchema, 'The new volume, detached'), ...errorResponses(400, 401, 404, 409, 413) },
});

export type CreateRoute = typeof create;
export type ListRoute = typeof list;
export type GetRoute = typeof get;
export type RemoveRoute = typeof remove;
export type RevertRoute = typeof revert;
export type CreateVolumeRoute = typeof createVolume;
