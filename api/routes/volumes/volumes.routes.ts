import { createRoute, z } from '@hono/zod-openapi';
import { errorResponses, IdParamsSchema, jsonBody, jsonContent, PageHeadersSchema } from '../../schemas/common.js';
import { CreateVolumeSchema, MigrateVolumeSchema, ResizeVolumeSchema, VolumeListQuerySchema, VolumeSchema } from '../../schemas/volume.js';

const tags = ['Volumes'];

export const create = createRoute({
  path: '/api/v1/volumes',
  method: 'post',
  tags,
  summary: 'Create a detached DATADISK volume',
  request: { body: jsonBody(CreateVolumeSchema) },
  responses: { 201: jsonContent(VolumeSchema, 'The volume, Ready'), ...errorResponses(400, 401, 404, 409, 413) },
});

export const list = createRoute({
  path: '/api/v1/volumes',
  method: 'get',
  tags,
  summary: 'List volumes',
  request: { query: VolumeListQuerySchema },
  description: 'At most `limit` (default 100, at most 1000); when more follow, `X-Next-Cursor` holds the `after` of the next page and `Link` its URL.',
  responses: { 200: { ...jsonContent(z.array(VolumeSchema), 'The volumes'), headers: PageHeadersSchema }, ...errorResponses(400, 401) },
});

export const get = createRoute({
  path: '/api/v1/volumes/{id}',
  method: 'get',
  tags,
  summary: 'Get a volume (with its path on primary storage, for admins)',
  request: { params: IdParamsSchema },
  responses: { 200: jsonContent(VolumeSchema, 'The volume'), ...errorResponses(400, 401, 404) },
});

export const remove = createRoute({
  path: '/api/v1/volumes/{id}',
  method: 'delete',
  tags,
  summary: 'Delete a detached DATADISK volume (its backups stay)',
  request: { params: IdParamsSchema },
  responses: { 200: jsonContent(VolumeSchema, 'The volume, Destroyed'), ...errorResponses(400, 401, 404, 409) },
});

export const resize = createRoute({
  path: '/api/v1/volumes/{id}/resize',
  method: 'post',
  tags,
  summary: 'Resize a volume',
  request: { params: IdParamsSchema, body: jsonBody(ResizeVolumeSchema) },
  responses: { 200: jsonContent(VolumeSchema, 'The resized volume'), ...errorResponses(400, 401, 404, 409, 413) },
});

export const migrate = createRoute({
  path: '/api/v1/volumes/{id}/migrate',
  method: 'post',
  tags,
  summary: 'Move a volume to another storage pool',
  request: { params: IdParamsSchema, body: jsonBody(MigrateVolumeSchema) },
  responses: { 200: jsonContent(VolumeSchema, 'The volume in its new pool'), ...errorResponses(400, 401, 404, 409, 413) },
});

export type CreateRoute = typeof create;
export type ListRoute = typeof list;
export type GetRoute = typeof get;
export type RemoveRoute = typeof remove;
export type ResizeRoute = typeof resize;
export type MigrateRoute = typeof migrate;
