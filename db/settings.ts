import { DEFAULT_SETTINGS, SETTINGS, SETTING_NAMES, parseSetting, type SettingName, type Settings } from '../config/settings.js';
import type { Queryable } from './pool.js';

/** Inserts every known setting with its default; keeps values an operator already changed. */
export async function seedSettings(db: Queryable): Promise<void> {
  for (const name of SETTING_NAMES) {
    const s = SETTINGS[name];
    await db.query(
      `INSERT INTO configuration (name, value, default_value, description) VALUES ($1, $2, $2, $3)
       ON CONFLICT (name) DO UPDATE SET default_value = EXCLUDED.default_value, description = EXCLUDED.description`,
      [name, String(s.default), s.description],
    );
  }
}

/** Reads every setting, typed and validated; a missing or invalid stored value falls back to its default. */
export async function readSettings(db: Queryable): Promise<Settings> {
  const { rows } = await db.query<{ name: string; value: string }>('SELECT name, value FROM configuration');
  const out: Settings = { ...DEFAULT_SETTINGS };
  for (const r of rows) {
    if (!(SETTING_NAMES as string[]).includes(r.name)) continue;
    const name = r.name as SettingName;
    try {
      out[name] = parseSetting(name, r.value);
    } catch {
      out[name] = DEFAULT_SETTINGS[name];
    }
  }
  return out;
}

export interface SettingRow {
  name: SettingName;
  value: number;
  defaultValue: number;
  description: string;
  updatedAt: string;
}

/** Lists settings for the API. */
export async function listSettings(db: Queryable): Promise<SettingRow[]> {
  const { rows } = await db.query('SELECT name, value, default_value, description, updated FROM configuration ORDER BY name');
  return rows
    .filter((r) => (SETTING_NAMES as string[]).includes(r.name))
    .map((r) => ({
      name: r.name as SettingName,
      value: Number(r.value),
      defaultValue: Number(r.default_value),
      description: r.description,
      updatedAt: new Date(r.updated).toISOString(),
    }));
}

/** Locks one setting's row for the rest of the transaction; returns its stored value (undefined: no such row). */
export async function lockSetting(db: Queryable, name: SettingName): Promise<string | undefined> {
  const { rows } = await db.query<{ value: string }>('SELECT value FROM configuration WHERE name = $1 FOR UPDATE', [name]);
  return rows[0]?.value;
}

/** Validates and stores one setting; throws a ZodError on an invalid value and changes nothing. */
export async function updateSetting(db: Queryable, name: SettingName, value: unknown): Promise<number> {
  const parsed = parseSetting(name, value);
  await db.query('UPDATE configuration SET value = $2, updated = now() WHERE name = $1', [name, String(parsed)]);
  return parsed;
}
