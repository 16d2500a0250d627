import { createRouter } from '../../openapi.js';
import * as handlers from './vms.handlers.js';
import * as routes from './vms.routes.js';

/** Virtual machines and their actions. */
export default createRouter()
  .openapi(routes.create, handlers.create)
  .openapi(routes.list, handlers.list)
  .openapi(routes.get, handlers.get)
  .openapi(routes.allowedActions, handlers.allowedActions)
  .openapi(routes.act, handlers.act)
  .openapi(routes.consoleTail, handlers.consoleTail)
  .openapi(routes.snapshotTogether, handlers.snapshotTogether);
