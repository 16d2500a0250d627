import type { BackupScrubService } from '../../../services/backup-scrub.js';
import type { StorageGcService } from '../../../services/storage-gc.js';
import { HttpError } from '../../errors.js';
import { assertAdmin } from '../../middleware/auth.js';
import { createRouter } from '../../openapi.js';
import * as routes from './storage.routes.js';

/** Storage maintenance over the stack's GC and scrub services (services/storage-gc.ts, services/backup-scrub.ts). */
export function storageRouter(storageGc: StorageGcService | undefined, backupScrub: BackupScrubService | undefined) {
  return createRouter()
    .openapi(routes.runGc, async (c) => {
      assertAdmin(c);
      if (!storageGc) throw new HttpError(501, 'NOT_IMPLEMENTED', 'storage GC is not available in this process');
      return c.json(await storageGc.runNow(), 200);
    })
    .openapi(routes.runScrub, async (c) => {
      assertAdmin(c);
      if (!backupScrub) throw new HttpError(501, 'NOT_IMPLEMENTED', 'the backup scrub is not available in this process');
      return c.json(await backupScrub.runNow(), 200);
    });
}
