import { ZodError } from 'zod';
import { isSettingName, type Settings } from '../config/settings.js';
import { recordEvent } from '../db/events.js';
import type { Logger } from 'pino';
import { withTransaction, type Pool } from '../db/pool.js';
import { listSettings, lockSetting, readSettings, updateSetting, type SettingRow } from '../db/settings.js';
import { NotFoundError, ValidationError } from '../domain/errors.js';
import type { Caller } from './caller.js';
import type { BackupScrubService } from './backup-scrub.js';
import type { StorageGcService } from './storage-gc.js';

/** Runtime configuration (docs/design.md §7): read by anyone, changed by admins. */
export function createConfigurationService(deps: {
  pool: Pool;
  logger: Logger;
  /** Re-times the storage GC schedule when `storage.cleanup.interval` changes. */
  storageGc?: Pick<StorageGcService, 'ensureSchedule'>;
  /** Re-times (or pauses) the backup scrub schedule when `backup.scrub.interval` changes. */
  backupScrub?: Pick<BackupScrubService, 'ensureSchedule'>;
}) {
  const { pool, logger } = deps;
  return {
    list: (): Promise<SettingRow[]> => listSettings(pool),
    /** Every setting's current value (defaults for the unset). */
    values: (): Promise<Settings> => readSettings(pool),

    /** Validates and stores one setting (ValidationError for a bad value, NotFoundError for an unknown name). */
    async update(caller: Caller, name: string, value: unknown): Promise<SettingRow> {
      if (!isSettingName(name)) throw new NotFoundError('configuration', name);
      await withTransaction(pool, async (tx) => {
        const before = await lockSetting(tx, name);
        const stored = await updateSetting(tx, name, value).catch((err: unknown) => {
          if (!(err instanceof ZodError)) throw err;
          const reason = err.issues[0]?.message ?? 'invalid value';
          throw new ValidationError(`invalid value for ${name}: ${reason}`, { value: reason });
        });
        await recordEvent(tx, {
          type: 'CONFIGURATION.VALUE.EDIT',
          // Configuration is global: no account owns the event, admins see it.
          accountId: null,
          resourceType: 'Configuration',
          resourceId: name,
          description: `configuration ${name} changed from ${before} to ${stored}`,
          details: { name, from: before === undefined ? null : Number(before), to: stored, by: caller.accountId },
        });
      });
      const row = (await listSettings(pool)).find((s) => s.name === name)!;
      if (name === 'storage.cleanup.interval' && deps.storageGc) {
        // The value is stored either way; a worker re-applies it to the schedule when it starts.
        await deps.storageGc.ensureSchedule(row.value).catch((err: unknown) => logger.warn({ err }, 'updating the storage GC schedule failed'));
      }
      if (name === 'backup.scrub.interval' && deps.backupScrub) {
        await deps.backupScrub.ensureSchedule(row.value).catch((err: unknown) => logger.warn({ err }, 'updating the backup scrub schedule failed'));
      }
      return row;
    },
  };
}

export type ConfigurationService = ReturnType<typeof createConfigurationService>;
