import { open, stat } from 'node:fs/promises';

/** Bytes read from the end of a file for its tail: a console line is short; a runaway one is cut. */
const TAIL_BYTES = 256 * 1024;

/**
 * The last `lines` lines of a text file (a VM's console log), reading at most its last 256 KiB, so a log
 * that grew for months costs the same. Control characters other than tab are dropped (a console prints
 * terminal escapes). A missing file is no lines.
 */
export async function tailFile(file: string, lines: number): Promise<{ lines: string[]; truncated: boolean; updatedAt: string | null }> {
  const st = await stat(file).catch(() => null);
  if (!st) return { lines: [], truncated: false, updatedAt: null };
  const start = Math.max(0, st.size - TAIL_BYTES);
  const fh = await open(file, 'r');
  let text: string;
  try {
    const buf = Buffer.alloc(st.size - start);
    await fh.read(buf, 0, buf.length, start);
    text = buf.toString('utf8');
  } finally {
    await fh.close();
  }
  let all = text.split(/\r?\n/);
  // A cut first line is partial; a trailing newline leaves an empty last element.
  if (start > 0) all = all.slice(1);
  if (all.at(-1) === '') all.pop();
  const clean = all.map((l) => l.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').replace(/[\x00-\x08\x0b-\x1f\x7f]/g, ''));
  return { lines: clean.slice(-lines), truncated: start > 0 || clean.length > lines, updatedAt: st.mtime.toISOString() };
}
