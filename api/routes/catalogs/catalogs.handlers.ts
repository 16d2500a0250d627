import type { AppRouteHandler } from '../../types.js';
import type * as routes from './catalogs.routes.js';

export const isos: AppRouteHandler<typeof routes.isos> = async (c) => c.json(await c.var.services.catalogs.isos(), 200);
export const serviceOfferings: AppRouteHandler<typeof routes.serviceOfferings> = async (c) => c.json(await c.var.services.catalogs.serviceOfferings(), 200);
export const hosts: AppRouteHandler<typeof routes.hosts> = async (c) => c.json(await c.var.services.catalogs.hostsWithWorkers(), 200);
export const storagePools: AppRouteHandler<typeof routes.storagePools> = async (c) => c.json(await c.var.services.catalogs.storagePools(), 200);
