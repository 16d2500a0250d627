import { describe, expect, it } from 'vitest';
import {
  DEFAULT_SETTINGS,
  SETTINGS,
  SETTING_NAMES,
  backupRetryFrom,
  incrementalFrom,
  isSettingName,
  parseSetting,
  type SettingName,
} from '../../config/settings.js';

/** docs/design.md §7, backup.queue.timeout (the bound on waiting for a backup worker) and idempotency.key.ttl included. */
const DESIGN_DEFAULTS = {
  'backup.max.attempts': 3,
  'backup.retry.interval': 300,
  'backup.pool.size': 10,
  'backup.queue.timeout': 3600,
  'idempotency.key.ttl': 86_400,
  'storage.cleanup.interval': 3600,
  'backup.incremental': 1,
  'snapshot.delta.max': 16,
  'backup.scrub.interval': 86_400,
  'backup.scrub.rate': 64,
  'backup.scrub.reverify': 604_800,
  // Off: clients that sign without signatureVersion=3 keep working unless an operator asks for it.
  'cloudstack.signature.v3.required': 0,
};
/** Settings where 0 means off. */
const ZERO_MEANS_OFF: SettingName[] = ['backup.scrub.interval'];
/** The switches (0/1); every other setting is a whole number. */
const SWITCHES: SettingName[] = ['backup.incremental', 'cloudstack.signature.v3.required'];
const NUMBERS = SETTING_NAMES.filter((n) => !SWITCHES.includes(n));

describe('defaults', () => {
  it('are exactly the docs/design.md §7 table', () => {
    expect(DEFAULT_SETTINGS).toEqual(DESIGN_DEFAULTS);
  });

  it('the setting names are exactly those of section 7', () => {
    expect([...SETTING_NAMES].sort()).toEqual(Object.keys(DESIGN_DEFAULTS).sort());
  });

  it('every setting has a description and a default its own schema accepts', () => {
    for (const name of SETTING_NAMES) {
      expect(SETTINGS[name].description.length, name).toBeGreaterThan(0);
      expect(parseSetting(name, SETTINGS[name].default), name).toBe(SETTINGS[name].default);
    }
  });
});

describe('parseSetting', () => {
  it.each(NUMBERS)('%s accepts numeric strings and numbers', (name) => {
    expect(parseSetting(name, '60')).toBe(60);
    expect(parseSetting(name, 60)).toBe(60);
    expect(parseSetting(name, String(DESIGN_DEFAULTS[name]))).toBe(DESIGN_DEFAULTS[name]);
  });

  it('accepts the bounds that are meaningful', () => {
    expect(parseSetting('backup.max.attempts', '1')).toBe(1);
    expect(parseSetting('backup.retry.interval', '1')).toBe(1);
    expect(parseSetting('backup.pool.size', '1')).toBe(1);
    expect(parseSetting('backup.max.attempts', 100)).toBe(100);
    expect(parseSetting('backup.retry.interval', 86_400)).toBe(86_400);
  });

  const BAD: unknown[] = [0, '0', -1, '-1', '-300', 1.5, '2.5', 'abc', 'three', '', '   ', null, Number.NaN, Infinity, '1e999'];
  const cases = NUMBERS.flatMap((name) =>
    BAD.filter((v) => !(ZERO_MEANS_OFF.includes(name) && (v === 0 || v === '0'))).map((value) => ({ name, value })),
  );

  it.each(ZERO_MEANS_OFF)('%s accepts 0 (off)', (name) => {
    expect(parseSetting(name, 0)).toBe(0);
    expect(parseSetting(name, '0')).toBe(0);
  });

  it.each(cases)('$name rejects $value', ({ name, value }) => {
    expect(() => parseSetting(name, value)).toThrow();
  });

  it.each([
    ['backup.max.attempts', 101],
    ['backup.max.attempts', 1_000_000],
    ['backup.retry.interval', 86_401],
    ['backup.pool.size', 1001],
    ['storage.cleanup.interval', 604_801],
    ['storage.cleanup.interval', 9],
    ['snapshot.delta.max', 0],
    ['snapshot.delta.max', 1001],
    ['backup.scrub.interval', 2_592_001],
    ['backup.scrub.rate', 100_001],
    ['backup.scrub.reverify', 59],
  ] as Array<[SettingName, number]>)('%s rejects out-of-range %s', (name, value) => {
    expect(() => parseSetting(name, value)).toThrow();
    expect(() => parseSetting(name, String(value))).toThrow();
  });
});

describe('backupRetryFrom', () => {
  it('maps the defaults to {maxAttempts: 3, retryIntervalSeconds: 300}', () => {
    expect(backupRetryFrom(DEFAULT_SETTINGS)).toEqual({ maxAttempts: 3, retryIntervalSeconds: 300 });
  });

  it('maps changed values and ignores the other settings', () => {
    expect(
      backupRetryFrom({
        'backup.max.attempts': 7,
        'backup.retry.interval': 45,
        'backup.pool.size': 2,
        'backup.queue.timeout': 60,
        'idempotency.key.ttl': 600,
        'storage.cleanup.interval': 99,
        'backup.incremental': 0,
        'snapshot.delta.max': 3,
        'backup.scrub.interval': 0,
        'backup.scrub.rate': 1,
        'backup.scrub.reverify': 60,
        'cloudstack.signature.v3.required': 1,
      }),
    ).toEqual({ maxAttempts: 7, retryIntervalSeconds: 45 });
  });
});

describe('isSettingName', () => {
  it('accepts the seven names', () => {
    for (const name of Object.keys(DESIGN_DEFAULTS)) expect(isSettingName(name), name).toBe(true);
  });

  it.each(['', 'backup', 'backup.max', 'BACKUP.MAX.ATTEMPTS', 'backup.max.attempts ', 'backup.retry.intervals', 'unknown.setting'])(
    'rejects unknown name %j',
    (name) => {
      expect(isSettingName(name)).toBe(false);
    },
  );

  it.each(['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf'])('rejects prototype key %s', (name) => {
    expect(isSettingName(name)).toBe(false);
  });
});

describe('backup.incremental', () => {
  it.each([
    [true, 1],
    [false, 0],
    [1, 1],
    [0, 0],
    ['true', 1],
    ['false', 0],
    [' TRUE ', 1],
    ['1', 1],
    ['0', 0],
  ])('reads %j as %d', (value, expected) => {
    expect(parseSetting('backup.incremental', value)).toBe(expected);
  });

  it.each([[2], [-1], ['yes'], ['no'], [''], ['2'], [null], [0.5], ['on']])('rejects %j', (value) => {
    expect(() => parseSetting('backup.incremental', value)).toThrow();
  });

  it('incrementalFrom maps the defaults to {incremental: true, deltaMax: 16}', () => {
    expect(incrementalFrom(DEFAULT_SETTINGS)).toEqual({ incremental: true, deltaMax: 16 });
    expect(incrementalFrom({ ...DEFAULT_SETTINGS, 'backup.incremental': 0, 'snapshot.delta.max': 2 })).toEqual({ incremental: false, deltaMax: 2 });
  });
});

describe('parseSetting refuses values that only coerce to numbers', () => {
  it.each([[true], [[5]], ['0x10'], ['1e2'], [null]])('rejects %j', (value) => {
    expect(() => parseSetting('backup.max.attempts', value)).toThrow();
  });
});
