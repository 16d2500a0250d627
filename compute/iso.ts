/**
 * The ISO volsnap ships for its KVM hosts (docs/design.md §15): `volsnap-tools`, a small ISO 9660 image built
 * with Debian's xorriso at start-up, so attach-ISO on a running VM changes a real CD-ROM's media. Rebuilt only
 * when missing.
 */
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../storage/exec.js';

export const TOOLS_ISO_NAME = 'volsnap-tools';

/** Builds (once) the tools ISO in `dir`; its path, or the reason it could not be built. */
export async function ensureToolsIso(dir: string): Promise<{ path: string } | { reason: string }> {
  const file = path.join(dir, `${TOOLS_ISO_NAME}.iso`);
  if (existsSync(file)) return { path: file };
  const staging = path.join(dir, `.${TOOLS_ISO_NAME}-staging`);
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  await writeFile(path.join(staging, 'README.TXT'), 'volsnap tools ISO: a CD-ROM for attach-ISO on running VMs.\n');
  const tmp = `${file}.tmp`;
  try {
    await run('xorriso', ['-as', 'mkisofs', '-quiet', '-V', 'VOLSNAP_TOOLS', '-o', tmp, staging]);
    await rename(tmp, file);
    return { path: file };
  } catch (err) {
    await rm(tmp, { force: true });
    return { reason: err instanceof Error ? err.message : String(err) };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
