import type { StorageGcService } from '../../../services/storage-gc.js';
import { HttpError } from '../../errors.js';
import { assertAdmin } from '../../middleware/auth.js';
import { createRouter } from '../../openapi.js';
import * as routes from './storage.routes.js';

/** Storage maintenance over the stack's GC service (services/storage-gc.ts). */
export function storageRouter(storageGc: StorageGcService | undefined) {
  return createRouter().openapi(routes.runGc, async (c) => {
    assertAdmin(c);
    if (!storageGc) throw new HttpError(501, 'NOT_IMPLEMENTED', 'storage GC is not available in this process');
    return c.json(await storageGc.runNow(), 200);
  });
}
