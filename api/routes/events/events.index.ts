import { createRouter } from '../../openapi.js';
import * as handlers from './events.handlers.js';
import * as routes from './events.routes.js';

/** The event log and its live stream. */
export default createRouter().openapi(routes.list, handlers.list).openapi(routes.stream, handlers.stream);
