/**
 * The read side of the CloudStack dialect's own records (async jobs, the events search CloudStack's
 * listEvents needs), for api/cloudstack/commands.ts: the API reaches the database only through services/.
 */
export { findAsyncJob, listAsyncJobs, snapshotIdByIdempotencyKey } from '../../db/async-jobs.js';
export { searchEvents } from '../../db/event-search.js';
