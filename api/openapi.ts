import { OpenAPIHono } from '@hono/zod-openapi';
import { validationHook } from './errors.js';
import type { AppBindings, AppOpenAPI } from './types.js';

/** A router whose request validation answers in the API's error shape. */
export function createRouter(): AppOpenAPI {
  return new OpenAPIHono<AppBindings>({ strict: false, defaultHook: validationHook });
}

/** Serves the OpenAPI document at /openapi.json, generated from the same schemas that validate requests. */
export function configureOpenAPI(app: AppOpenAPI, version: string): void {
  app.openAPIRegistry.registerComponent('securitySchemes', 'bearerAuth', {
    type: 'http',
    scheme: 'bearer',
    description: 'An account API key: `Authorization: Bearer vs_...`',
  });
  app.doc31('/openapi.json', {
    openapi: '3.1.0',
    info: {
      title: 'volsnap API',
      version,
      description:
        'Volume snapshots created on primary storage in milliseconds and backed up durably in the background. ' +
        'Errors are `{"error": {"code", "message", "details"}}`.',
    },
    security: [{ bearerAuth: [] }],
  });
}
