import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  InvalidPathError,
  assertUuid,
  backupFilePath,
  backupInstallPath,
  isFileOf,
  parseVolumePath,
  resolveInside,
  resolveInstallPath,
  tempPathFor,
  volumePath,
} from '../../storage/paths.js';

const A = '11111111-1111-4111-8111-111111111111';
const V = '22222222-2222-4222-8222-222222222222';
const S = '33333333-3333-4333-8333-333333333333';
const ids = { accountId: A, volumeId: V, snapshotId: S };

describe('layout', () => {
  it('puts a volume at <pool>/<volumeId>.qcow2', () => {
    expect(volumePath('/pool/p1', V)).toBe(`/pool/p1/${V}.qcow2`);
    expect(volumePath('/pool/p1/', V, 'vhd')).toBe(`/pool/p1/${V}.vhd`);
  });

  it('puts a backup at snapshots/<account>/<volume>/<snapshot>.qcow2 under the store root', () => {
    expect(backupInstallPath(ids)).toBe(`snapshots/${A}/${V}/${S}.qcow2`);
    expect(backupFilePath('/store', ids)).toBe(`/store/snapshots/${A}/${V}/${S}.qcow2`);
  });

  it('lower-cases ids so one id always maps to one path', () => {
    expect(volumePath('/pool', V.toUpperCase())).toBe(`/pool/${V}.qcow2`);
    expect(assertUuid('ABCDEF01-2345-4789-8BCD-EF0123456789')).toBe('abcdef01-2345-4789-8bcd-ef0123456789');
  });

  it('makes temp names in the same directory, unique, recognisable as the final file\'s', () => {
    const final = backupFilePath('/store', ids);
    const t1 = tempPathFor(final);
    const t2 = tempPathFor(final);
    expect(path.dirname(t1)).toBe(path.dirname(final));
    expect(t1).not.toBe(t2);
    expect(t1.startsWith(`${final}.partial-`)).toBe(true);
    const name = path.basename(final);
    expect(isFileOf(name, path.basename(t1))).toBe(true);
    expect(isFileOf(name, name)).toBe(true);
    expect(isFileOf(name, `${name}.partial-`)).toBe(false);
    expect(isFileOf(name, `${S}.vhd`)).toBe(false);
    expect(isFileOf(name, `x${name}`)).toBe(false);
  });
});

describe('ids must be UUIDs', () => {
  const bad = ['', '..', '../etc', 'abc', `${V}/..`, `${V} `, `${V}\0`, `../${V}`, 'a'.repeat(36), '*', `{${V}}`];
  it.each(bad)('rejects %j as a volume id', (id) => {
    expect(() => volumePath('/pool', id)).toThrow(InvalidPathError);
    expect(() => volumePath('/pool', id)).toThrow(/volumeId must be a UUID/);
  });

  it.each(bad)('rejects %j in any backup id', (id) => {
    expect(() => backupInstallPath({ ...ids, accountId: id })).toThrow(/accountId must be a UUID/);
    expect(() => backupInstallPath({ ...ids, volumeId: id })).toThrow(/volumeId must be a UUID/);
    expect(() => backupFilePath('/store', { ...ids, snapshotId: id })).toThrow(/snapshotId must be a UUID/);
  });

  it('rejects non-strings', () => {
    expect(() => assertUuid(undefined)).toThrow(InvalidPathError);
    expect(() => assertUuid(42 as unknown as string)).toThrow(InvalidPathError);
  });
});

describe('paths stay inside their root', () => {
  it('refuses escapes', () => {
    for (const rel of ['..', '../x', 'a/../../x', '/etc/passwd', '', '.', 'a/..']) {
      expect(() => resolveInside('/store', rel), rel).toThrow(InvalidPathError);
    }
    expect(resolveInside('/store', 'a/b/../c')).toBe('/store/a/c');
  });

  it('does not take a sibling with the same prefix for the root', () => {
    expect(() => resolveInside('/store', '../store-evil/x')).toThrow(InvalidPathError);
  });

  it('needs an absolute root and no NUL bytes', () => {
    expect(() => resolveInside('store', 'x')).toThrow(/absolute/);
    expect(() => resolveInside('/store', 'x\0y')).toThrow(/NUL/);
  });

  it('accepts only install paths with the backup layout', () => {
    expect(resolveInstallPath('/store', `snapshots/${A}/${V}/${S}.qcow2`)).toBe(`/store/snapshots/${A}/${V}/${S}.qcow2`);
    for (const p of [
      `snapshots/${A}/${V}/../../../../etc/passwd`,
      `/snapshots/${A}/${V}/${S}.qcow2`,
      `snapshots/${A}/../${V}/${S}.qcow2`,
      `snapshots/${A}/${V}/${S}.qcow2.partial-abc`,
      `other/${A}/${V}/${S}.qcow2`,
      `snapshots/${A}/${V}/${S}.raw`,
      `../snapshots/${A}/${V}/${S}.qcow2`,
    ]) {
      expect(() => resolveInstallPath('/store', p), p).toThrow(InvalidPathError);
    }
  });

  it('accepts only normalized absolute <pool>/<uuid>.qcow2 volume paths', () => {
    expect(parseVolumePath(`/pool/p1/${V}.qcow2`)).toEqual({ poolPath: '/pool/p1', volumeId: V });
    for (const p of [`pool/${V}.qcow2`, `/pool/../etc/${V}.qcow2`, '/etc/passwd', `/pool/${V}.vhd`, `/pool/${V}.qcow2/`, '/pool/x.qcow2']) {
      expect(() => parseVolumePath(p), p).toThrow(InvalidPathError);
    }
  });
});
