import { createRoute, z } from '@hono/zod-openapi';
import { errorResponses, IdParamsSchema, jsonBody, jsonContent, optionalJsonBody, PageHeadersSchema } from '../../schemas/common.js';
import { CreateVmSnapshotsSchema, VmSnapshotsSchema } from '../../schemas/snapshot.js';
import { AllowedActionsSchema, CreateVmSchema, VmActionSchema, VmConsoleQuerySchema, VmConsoleSchema, VmListQuerySchema, VmSchema } from '../../schemas/vm.js';

const tags = ['Virtual machines'];

export const create = createRoute({
  path: '/api/v1/vms',
  method: 'post',
  tags,
  summary: 'Create a VM: its ROOT and data disks are created as images in the first storage pool',
  request: { body: jsonBody(CreateVmSchema) },
  responses: { 201: jsonContent(VmSchema, 'The VM, Running'), ...errorResponses(400, 401, 404, 409, 413) },
});

export const list = createRoute({
  path: '/api/v1/vms',
  method: 'get',
  tags,
  summary: 'List VMs (an admin sees every account\'s)',
  request: { query: VmListQuerySchema },
  description: 'At most `limit` (default 100, at most 1000); when more follow, `X-Next-Cursor` holds the `after` of the next page and `Link` its URL.',
  responses: { 200: { ...jsonContent(z.array(VmSchema), 'The VMs'), headers: PageHeadersSchema }, ...errorResponses(400, 401) },
});

export const get = createRoute({
  path: '/api/v1/vms/{id}',
  method: 'get',
  tags,
  summary: 'Get a VM',
  request: { params: IdParamsSchema },
  responses: { 200: jsonContent(VmSchema, 'The VM'), ...errorResponses(400, 401, 404) },
});

export const allowedActions = createRoute({
  path: '/api/v1/vms/{id}/allowed-actions',
  method: 'get',
  tags,
  summary: 'Which VM actions the parallel-operation policy allows now, with reasons',
  request: { params: IdParamsSchema },
  responses: { 200: jsonContent(AllowedActionsSchema, 'Every VM action with its decision'), ...errorResponses(400, 401, 404) },
});

export const act = createRoute({
  path: '/api/v1/vms/{id}/actions',
  method: 'post',
  tags,
  summary: 'Run a VM action (refused with 409 OPERATION_NOT_ALLOWED_DURING_BACKUP when the policy says no)',
  request: { params: IdParamsSchema, body: jsonBody(VmActionSchema) },
  responses: { 200: jsonContent(VmSchema, 'The VM after the action'), ...errorResponses(400, 401, 404, 409, 413) },
});

export const consoleTail = createRoute({
  path: '/api/v1/vms/{id}/console',
  method: 'get',
  tags,
  summary: "The tail of a KVM VM's serial console log (admin)",
  request: { params: IdParamsSchema, query: VmConsoleQuerySchema },
  responses: { 200: jsonContent(VmConsoleSchema, 'The last lines'), ...errorResponses(400, 401, 403, 404) },
});

export const snapshotTogether = createRoute({
  path: '/api/v1/vms/{id}/snapshots',
  method: 'post',
  tags,
  summary: "Snapshot several of a VM's volumes at one instant, each its own snapshot with its own backup",
  description:
    "A running KVM VM's disks are snapshotted by its QEMU on its host in one transaction, all or none (a failure leaves each " +
    'snapshot in Error and answers 409 SNAPSHOT_CREATION_FAILED); a stopped VM\'s one after the other, which is the same instant. ' +
    'Each snapshot then backs up on its own, as POST /api/v1/volumes/{id}/snapshots does.',
  request: { params: IdParamsSchema, body: optionalJsonBody(CreateVmSnapshotsSchema) },
  responses: { 201: jsonContent(VmSnapshotsSchema, 'The snapshots at their milestone'), ...errorResponses(400, 401, 404, 409, 413) },
});

export type CreateRoute = typeof create;
export type SnapshotTogetherRoute = typeof snapshotTogether;
export type ConsoleRoute = typeof consoleTail;
export type ListRoute = typeof list;
export type GetRoute = typeof get;
export type AllowedActionsRoute = typeof allowedActions;
export type ActRoute = typeof act;
