import { createRouter } from '../../openapi.js';
import * as handlers from './accounts.handlers.js';
import * as routes from './accounts.routes.js';

/** Accounts and API keys. `/accounts/me` comes before `/accounts/{id}` routes. */
export default createRouter()
  .openapi(routes.create, handlers.create)
  .openapi(routes.list, handlers.list)
  .openapi(routes.me, handlers.me)
  .openapi(routes.update, handlers.update)
  .openapi(routes.listKeys, handlers.listKeys)
  .openapi(routes.createKey, handlers.createKey)
  .openapi(routes.revokeKey, handlers.revokeKey)
  .openapi(routes.getCloudStackKeys, handlers.getCloudStackKeys)
  .openapi(routes.issueCloudStackKeys, handlers.issueCloudStackKeys)
  .openapi(routes.revokeCloudStackKeys, handlers.revokeCloudStackKeys);
