/**
 * The backup scrub's schedule and on-demand runs (docs/design.md §14): the Temporal Schedule `backup-scrub`
 * starts `backupScrubWorkflow` every `backup.scrub.interval` seconds; 0 pauses it.
 */
import { randomUUID } from 'node:crypto';
import { ScheduleNotFoundError, type Client } from '@temporalio/client';
import type { Logger } from 'pino';
import { ensureIntervalSchedule, pauseSchedule, scheduledTaskQueue, type ScheduleChange } from '../temporal/interval-schedule.js';
import type { BackupScrubResult, backupScrubWorkflow } from '../workflows/backup-scrub-workflow.js';

export type { BackupScrubResult };

export const BACKUP_SCRUB_SCHEDULE_ID = 'backup-scrub';
const WORKFLOW_TYPE = 'backupScrubWorkflow';
const OFF_NOTE = 'paused: backup.scrub.interval is 0 (set it above 0 to scrub again)';

export interface BackupScrubService {
  /** Runs the scrub now and answers what it found. */
  runNow(): Promise<BackupScrubResult>;
  /** Creates, re-times or pauses the schedule (call when `backup.scrub.interval` changes). */
  ensureSchedule(intervalSeconds: number): Promise<ScheduleChange | 'paused'>;
}

export function createBackupScrubService(deps: { client: Client; taskQueue: string; logger?: Logger }): BackupScrubService {
  const { client } = deps;
  return {
    async runNow() {
      const taskQueue = (await scheduledTaskQueue(client, BACKUP_SCRUB_SCHEDULE_ID)) ?? deps.taskQueue;
      return client.workflow.execute<typeof backupScrubWorkflow>(WORKFLOW_TYPE, {
        workflowId: `${BACKUP_SCRUB_SCHEDULE_ID}-manual-${randomUUID()}`,
        taskQueue,
        args: [{ trigger: 'manual' }],
        workflowExecutionTimeout: '24 hours',
        staticSummary: 'Backup scrub run on demand: re-hash stored backups against their checksums',
      });
    },
    async ensureSchedule(intervalSeconds) {
      if (intervalSeconds === 0) {
        await pauseSchedule(client, BACKUP_SCRUB_SCHEDULE_ID, OFF_NOTE);
        return 'paused';
      }
      // Paused because the setting was 0 (read before the update rewrites the note): on again after it. An
      // operator's own pause is theirs to lift.
      const handle = client.schedule.getHandle(BACKUP_SCRUB_SCHEDULE_ID);
      const before = await handle.describe().then(
        (d) => d.state,
        (err: unknown) => (err instanceof ScheduleNotFoundError ? null : Promise.reject(err)),
      );
      const change = await ensureIntervalSchedule(client, {
        scheduleId: BACKUP_SCRUB_SCHEDULE_ID,
        workflowType: WORKFLOW_TYPE,
        taskQueue: deps.taskQueue,
        intervalSeconds,
        args: [{ trigger: 'schedule' }],
        summary: `Backup scrub (every ${intervalSeconds}s): re-hash stored backups, mark those that do not match as faulty`,
        note: `backup scrub every ${intervalSeconds}s (backup.scrub.interval); trigger it to run now`,
        workflowExecutionTimeout: '7 days',
        logger: deps.logger,
      });
      if (before?.paused && before.note === OFF_NOTE) await handle.unpause(`backup.scrub.interval set to ${intervalSeconds}`);
      return change;
    },
  };
}
