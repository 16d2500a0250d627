import { createRouter } from '../../openapi.js';
import * as handlers from './snapshots.handlers.js';
import * as routes from './snapshots.routes.js';

/** Snapshots: taking them, and the operations on existing ones. */
export default createRouter()
  .openapi(routes.create, handlers.create)
  .openapi(routes.list, handlers.list)
  .openapi(routes.get, handlers.get)
  .openapi(routes.remove, handlers.remove)
  .openapi(routes.revert, handlers.revert)
  .openapi(routes.createVolume, handlers.createVolume);
