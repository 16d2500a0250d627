import { z } from 'zod';

/**
 * Runtime configuration stored in the `configuration` table (DESIGN.md section 7), changeable through the API.
 * Values are read when a snapshot is created and travel in the workflow input, so a change applies to the
 * next snapshot without a restart.
 */
export const SETTINGS = {
  'backup.max.attempts': {
    schema: z.coerce.number().int().min(1).max(100),
    default: 3,
    description: 'Total backup attempts before the snapshot goes to Error',
  },
  'backup.retry.interval': {
    schema: z.coerce.number().int().min(1).max(86_400),
    default: 300,
    description: 'Seconds to wait between backup attempts',
  },
  'backup.pool.size': {
    schema: z.coerce.number().int().min(1).max(1000),
    default: 10,
    description: 'Concurrent backups per worker (the separate backup pool); read when a worker starts',
  },
  'storage.cleanup.interval': {
    schema: z.coerce.number().int().min(10).max(604_800),
    default: 3600,
    description: 'Seconds between storage garbage collection runs',
  },
} as const;

export type SettingName = keyof typeof SETTINGS;
export type Settings = { [K in SettingName]: number };

export const SETTING_NAMES = Object.keys(SETTINGS) as SettingName[];

export function isSettingName(name: string): name is SettingName {
  return Object.hasOwn(SETTINGS, name);
}

export const DEFAULT_SETTINGS: Settings = Object.fromEntries(
  SETTING_NAMES.map((n) => [n, SETTINGS[n].default]),
) as Settings;

/** Parses a stored or submitted value; throws a ZodError naming the problem when it is invalid. */
export function parseSetting(name: SettingName, value: unknown): number {
  return SETTINGS[name].schema.parse(value);
}

/** The backup retry settings a workflow is started with. */
export interface BackupRetrySettings {
  maxAttempts: number;
  retryIntervalSeconds: number;
}

export function backupRetryFrom(settings: Settings): BackupRetrySettings {
  return {
    maxAttempts: settings['backup.max.attempts'],
    retryIntervalSeconds: settings['backup.retry.interval'],
  };
}
