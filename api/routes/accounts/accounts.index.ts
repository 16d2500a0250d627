import { createRouter } from '../../openapi.js';
import * as handlers from './accounts.handlers.js';
import * as routes from './accounts.routes.js';

/** Accounts and API keys. */
export default createRouter().openapi(routes.create, handlers.create).openapi(routes.list, handlers.list).openapi(routes.me, handlers.me);
