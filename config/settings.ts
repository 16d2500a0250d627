import { z } from 'zod';

/**
 * Runtime configuration stored in the `configuration` table (docs/design.md §7), changeable through the API.
 * Values are read when a snapshot is created and travel in the workflow input, so a change applies to the
 * next snapshot without a restart.
 */
/** A whole number in [min, max], given as a number or a decimal string (not `true`, `[5]` or `0x10`). */
const wholeNumber = (min: number, max: number) =>
  z
    .union([z.number(), z.string().trim().regex(/^-?\d+$/, 'must be a whole number')])
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));

/**
 * A switch, stored as 1 (on) or 0 (off): given as a boolean, 0/1, or the strings "true"/"false"/"1"/"0" (any
 * other number or word is refused, so a typo never flips it).
 */
const onOff = () =>
  z
    .union([z.boolean(), z.literal(0), z.literal(1), z.string().trim().toLowerCase().pipe(z.enum(['true', 'false', '1', '0']))], {
      error: 'must be true or false (or 1 or 0)',
    })
    .transform((v) => (v === true || v === 1 || v === 'true' || v === '1' ? 1 : 0));

export const SETTINGS = {
  'backup.max.attempts': {
    schema: wholeNumber(1, 100),
    default: 3,
    description: 'Total backup attempts before the snapshot goes to Error',
  },
  'backup.retry.interval': {
    schema: wholeNumber(1, 86_400),
    default: 300,
    description: 'Seconds to wait between backup attempts',
  },
  'backup.queue.timeout': {
    schema: wholeNumber(10, 604_800),
    default: 3600,
    description:
      'Seconds a backup may wait for a backup worker to pick it up before the snapshot fails (primary snapshot deleted)',
  },
  'backup.pool.size': {
    schema: wholeNumber(1, 1000),
    default: 10,
    description: 'Concurrent backups per worker (the separate backup pool); read when a worker starts',
  },
  'idempotency.key.ttl': {
    schema: wholeNumber(60, 2_592_000),
    default: 86_400,
    description: 'Seconds an Idempotency-Key of a snapshot request holds; after it, or once its snapshot is Destroyed, the key takes a new snapshot',
  },
  'backup.incremental': {
    schema: onOff(),
    default: 1,
    description:
      'Whether a backup may be a delta on the previous backup of the same volume in the same image store (1/true) or is always a full copy (0/false)',
  },
  'snapshot.delta.max': {
    schema: wholeNumber(1, 1000),
    default: 16,
    description: 'Most deltas in a chain after a full backup; the next backup after that many is a full one',
  },
  'storage.cleanup.interval': {
    schema: wholeNumber(10, 604_800),
    default: 3600,
    description: 'Seconds between storage garbage collection runs',
  },
  'backup.scrub.interval': {
    schema: wholeNumber(0, 2_592_000),
    default: 86_400,
    description: 'Seconds between backup scrub runs, which re-hash stored backups against their checksums; 0 turns the scrub off',
  },
  'backup.scrub.rate': {
    schema: wholeNumber(1, 100_000),
    default: 64,
    description: 'MiB per second the backup scrub reads at most, so it does not starve backups and restores of the image store',
  },
  'backup.scrub.reverify': {
    schema: wholeNumber(60, 31_536_000),
    default: 604_800,
    description: 'Seconds after which a backup the scrub found matching its checksum is re-hashed',
  },
  'cloudstack.signature.v3.required': {
    schema: onOff(),
    default: 0,
    description:
      'Whether the CloudStack API accepts only requests signed with signatureVersion=3 and an expires at most an hour ahead (1/true): a request without one can be replayed for ever. Off (0) for clients that sign without it',
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

/** How a snapshot's backup may be incremental (docs/design.md §14), as it was when the snapshot was requested. */
export interface IncrementalBackupSettings {
  /** `backup.incremental`. */
  incremental: boolean;
  /** `snapshot.delta.max`: most deltas after a full backup. */
  deltaMax: number;
}

export function incrementalFrom(settings: Settings): IncrementalBackupSettings {
  return { incremental: settings['backup.incremental'] === 1, deltaMax: settings['snapshot.delta.max'] };
}

export function backupRetryFrom(settings: Settings): BackupRetrySettings {
  return {
    maxAttempts: settings['backup.max.attempts'],
    retryIntervalSeconds: settings['backup.retry.interval'],
  };
}
