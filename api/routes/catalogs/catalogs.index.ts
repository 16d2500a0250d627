import { createRouter } from '../../openapi.js';
import * as handlers from './catalogs.handlers.js';
import * as routes from './catalogs.routes.js';

/** Read-only catalogs: ISOs, service offerings, hosts, storage pools. */
export default createRouter()
  .openapi(routes.isos, handlers.isos)
  .openapi(routes.serviceOfferings, handlers.serviceOfferings)
  .openapi(routes.hosts, handlers.hosts)
  .openapi(routes.storagePools, handlers.storagePools);
