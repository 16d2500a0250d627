import { createRouter } from '../../openapi.js';
import * as handlers from './volumes.handlers.js';
import * as routes from './volumes.routes.js';

/** Volumes. */
export default createRouter()
  .openapi(routes.create, handlers.create)
  .openapi(routes.list, handlers.list)
  .openapi(routes.get, handlers.get)
  .openapi(routes.remove, handlers.remove)
  .openapi(routes.resize, handlers.resize)
  .openapi(routes.migrate, handlers.migrate);
