/**
 * Every storage path is derived from ids only, never from user-supplied names, and checked to stay inside its
 * root, so a crafted id or install path cannot reach outside primary storage or the image store.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';

/** Image formats a backup or volume file can have; the extension of its file name. */
export type ImageExt = 'qcow2' | 'vhd';

/** Ids of a backup, as in the driver's BackupTarget. */
export interface BackupIds {
  accountId: string;
  volumeId: string;
  snapshotId: string;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const UUID_SRC = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const TEMP_MARK = '.partial-';

/** Thrown for an id that is not a UUID or a path that would leave its root. */
export class InvalidPathError extends Error {
  override name = 'InvalidPathError';
}

/** Whether `s` is a canonical 8-4-4-4-12 hex UUID (any case). */
export function isUuid(s: unknown): s is string {
  return typeof s === 'string' && UUID_RE.test(s);
}

/** Returns the id lower-cased (UUIDs are case-insensitive, paths are not); throws InvalidPathError if it is not a UUID. */
export function assertUuid(id: unknown, what = 'id'): string {
  if (!isUuid(id)) throw new InvalidPathError(`${what} must be a UUID, got ${JSON.stringify(id)}`);
  return id.toLowerCase();
}

/** Resolves `rel` against the absolute `root`; throws InvalidPathError unless the result lies strictly inside root. */
export function resolveInside(root: string, rel: string): string {
  if (!path.isAbsolute(root)) throw new InvalidPathError(`root must be an absolute path, got ${JSON.stringify(root)}`);
  if (rel.includes('\0') || root.includes('\0')) throw new InvalidPathError('path contains a NUL byte');
  const base = path.resolve(root);
  const full = path.resolve(base, rel);
  const r = path.relative(base, full);
  if (r === '' || r === '..' || r.startsWith(`..${path.sep}`) || path.isAbsolute(r)) {
    throw new InvalidPathError(`path ${JSON.stringify(rel)} escapes its root ${JSON.stringify(root)}`);
  }
  return full;
}

/** Absolute path of a volume image: `<poolPath>/<volumeId>.<ext>`. */
export function volumePath(poolPath: string, volumeId: string, ext: ImageExt = 'qcow2'): string {
  return resolveInside(poolPath, `${assertUuid(volumeId, 'volumeId')}.${ext}`);
}

/** Splits an absolute volume path into its pool and volume id; throws unless it is exactly `<pool>/<uuid>.<ext>`. */
export function parseVolumePath(p: string, ext: ImageExt = 'qcow2'): { poolPath: string; volumeId: string } {
  if (!path.isAbsolute(p) || path.resolve(p) !== p) {
    throw new InvalidPathError(`volume path must be absolute and normalized, got ${JSON.stringify(p)}`);
  }
  const base = path.basename(p);
  const id = base.endsWith(`.${ext}`) ? base.slice(0, -ext.length - 1) : '';
  if (!isUuid(id)) throw new InvalidPathError(`volume path must end in <uuid>.${ext}, got ${JSON.stringify(p)}`);
  return { poolPath: path.dirname(p), volumeId: id.toLowerCase() };
}

/** Relative install path of a backup: `snapshots/<accountId>/<volumeId>/<snapshotId>.<ext>` (POSIX separators). */
export function backupInstallPath(ids: BackupIds, ext: ImageExt = 'qcow2'): string {
  const a = assertUuid(ids.accountId, 'accountId');
  const v = assertUuid(ids.volumeId, 'volumeId');
  const s = assertUuid(ids.snapshotId, 'snapshotId');
  return `snapshots/${a}/${v}/${s}.${ext}`;
}

/** Absolute path of a backup under the image store root. */
export function backupFilePath(imageStoreRoot: string, ids: BackupIds, ext: ImageExt = 'qcow2'): string {
  return resolveInside(imageStoreRoot, backupInstallPath(ids, ext));
}

/** Resolves a stored install path; throws unless it has exactly the backup layout and stays inside the root. */
export function resolveInstallPath(imageStoreRoot: string, installPath: string): string {
  const layout = new RegExp(`^snapshots/${UUID_SRC}/${UUID_SRC}/${UUID_SRC}\\.(qcow2|vhd)$`, 'i');
  if (!layout.test(installPath)) {
    throw new InvalidPathError(`install path must be snapshots/<uuid>/<uuid>/<uuid>.<ext>, got ${JSON.stringify(installPath)}`);
  }
  return resolveInside(imageStoreRoot, installPath);
}

/**
 * A fresh temporary name next to `finalPath` (same directory, so rename is atomic): `<final>.partial-<random>`,
 * or, for a backup attempt with a fencing token, `<final>.partial-<token, 16 hex digits><random>` (still hex
 * only, as storage GC reads temporary names), so the attempt that holds a newer token can tell the files of
 * superseded attempts from its own (staleTempFile).
 */
export function tempPathFor(finalPath: string, token?: number): string {
  const t = token === undefined ? '' : Math.trunc(token).toString(16).padStart(TOKEN_HEX, '0');
  return `${finalPath}${TEMP_MARK}${t}${randomBytes(8).toString('hex')}`;
}

const TOKEN_HEX = 16;

/** Whether the file name `name` is the final file `finalName` or one of its temporary files. */
export function isFileOf(finalName: string, name: string): boolean {
  return name === finalName || (name.startsWith(finalName + TEMP_MARK) && name.length > finalName.length + TEMP_MARK.length);
}

/**
 * Whether `name` is a temporary file of `finalName` left by an attempt older than the one holding `token`: one
 * without a token (a run before fencing, or an unfenced caller) or with a smaller token. Without `token`, every
 * temporary file of `finalName` is stale. The final file itself never is.
 */
export function staleTempFile(finalName: string, name: string, token?: number): boolean {
  if (name === finalName || !isFileOf(finalName, name)) return false;
  if (token === undefined) return true;
  const rest = name.slice(finalName.length + TEMP_MARK.length);
  if (!/^[0-9a-f]{32}$/.test(rest)) return true;
  return Number.parseInt(rest.slice(0, TOKEN_HEX), 16) < token;
}
