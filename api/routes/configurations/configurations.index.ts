import { createRouter } from '../../openapi.js';
import * as handlers from './configurations.handlers.js';
import * as routes from './configurations.routes.js';

/** Runtime configuration (docs/design.md §7). */
export default createRouter().openapi(routes.list, handlers.list).openapi(routes.update, handlers.update);
