import { resolve } from 'node:path';
import { ESLint } from 'eslint';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '..', '..');
const eslint = new ESLint({ cwd: ROOT });

/** The rule ids ESLint reports for `code` as if it were the file at `path` (repository-relative). */
async function violations(path: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath: resolve(ROOT, path) });
  return result!.messages.map((m) => m.ruleId ?? m.message);
}

const RESTRICTED = '@typescript-eslint/no-restricted-imports';

describe('lint guards the layers (eslint.config.js)', () => {
  it('workflows/ may not import I/O, activities or services at run time', async () => {
    expect(await violations('workflows/x.ts', "import { Pool } from 'pg';\nexport const p = Pool;\n")).toContain(RESTRICTED);
    expect(await violations('workflows/x.ts', "import { createSnapshotActivities } from '../activities/snapshot-activities.js';\nexport const a = createSnapshotActivities;\n")).toContain(RESTRICTED);
    expect(await violations('workflows/x.ts', "import { readFile } from 'node:fs/promises';\nexport const r = readFile;\n")).toContain(RESTRICTED);
  });

  it('workflows/ may import the workflow SDK, domain/, its own modules, and anything as a type', async () => {
    const ok = [
      "import { sleep } from '@temporalio/workflow';",
      "import { decide } from '../domain/policy.js';",
      "import { FAILURE_TYPES } from './definitions.js';",
      "import type { SnapshotActivities } from '../activities/snapshot-activities.js';",
      'export const x = [sleep, decide, FAILURE_TYPES];',
      'export type A = SnapshotActivities;',
    ].join('\n');
    expect(await violations('workflows/x.ts', `${ok}\n`)).toEqual([]);
  });

  it('domain/ may not import I/O or other layers', async () => {
    expect(await violations('domain/x.ts', "import { Pool } from 'pg';\nexport const p = Pool;\n")).toContain(RESTRICTED);
    expect(await violations('domain/x.ts', "import { getSnapshot } from '../db/snapshots.js';\nexport const g = getSnapshot;\n")).toContain(RESTRICTED);
    expect(await violations('domain/x.ts', "import { SNAPSHOT_STATES } from './snapshot-states.js';\nexport const s = SNAPSHOT_STATES;\n")).toEqual([]);
  });

  it('api/ may not reach db/ directly (its row types are shared vocabulary)', async () => {
    expect(await violations('api/routes/x/x.ts', "import { getSnapshot } from '../../../db/snapshots.js';\nexport const g = getSnapshot;\n")).toContain(RESTRICTED);
    expect(await violations('api/cloudstack/x.ts', "import { Pool } from 'pg';\nexport const p = Pool;\n")).toContain(RESTRICTED);
    expect(await violations('api/routes/x/x.ts', "import type { SnapshotRecord } from '../../../db/snapshots.js';\nexport type S = SnapshotRecord;\n")).toEqual([]);
  });

  it('a type imported without `import type` is refused', async () => {
    expect(
      await violations('services/x.ts', "import { SnapshotRecord } from '../db/snapshots.js';\nexport type S = SnapshotRecord;\n"),
    ).toContain('@typescript-eslint/consistent-type-imports');
  });
});
