/*
 * The CloudStack API dialect (docs/design.md §13): one adapter over the `Services` facade.
 *   router.ts     GET/POST /client/api: signature check, command dispatch, CloudStack envelopes
 *   signature.ts  ApiServer's HMAC-SHA1 signature and `expires`
 *   commands.ts   the commands, their parameters (listApis) and their translation onto the services
 * and in services/cloudstack/ what the dialect keeps and runs:
 *   jobs.ts       async jobs, durable in PostgreSQL, re-driven or failed after a replica goes away
 *   keys.ts       every account's CloudStack key pair
 *   errors.ts     CloudStack's error codes (a failed job stores its error in this form)
 *   store.ts      the read side of jobs and events for the commands
 *   views.ts      CloudStack's response objects
 */
export { createCloudStackApi, CLOUDSTACK_API_PATH, type CloudStackApiDeps } from './router.js';
export { cloudStackKeyInfo, ensureAdminCloudStackKeys, issueCloudStackKeys, revokeCloudStackKeys, type CloudStackKeys } from '../../services/cloudstack/keys.js';
