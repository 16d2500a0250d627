/*
 * The CloudStack API dialect (issue 13, DESIGN.md section 13): one adapter over the `Services` facade.
 *   router.ts     GET/POST /client/api: signature check, command dispatch, CloudStack envelopes
 *   signature.ts  ApiServer's HMAC-SHA1 signature and `expires`
 *   commands.ts   the commands, their parameters (listApis) and their translation onto the services
 *   jobs.ts       async jobs, durable in PostgreSQL, re-driven or failed after a replica goes away
 *   keys.ts       every account's CloudStack key pair
 *   views.ts      CloudStack's response objects
 */
export { createCloudStackApi, CLOUDSTACK_API_PATH, type CloudStackApiDeps } from './router.js';
export { ensureAdminCloudStackKeys, issueCloudStackKeys, type CloudStackKeys } from './keys.js';
