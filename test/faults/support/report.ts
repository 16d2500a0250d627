/** The matrix's results: a readable table on stdout and test-results/fault-matrix.json. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Violation } from './auditor.js';

export interface CaseResult {
  fault: string;
  step: string;
  outcome: 'pass' | 'fail' | 'xfail' | 'xpass' | 'error';
  /** What the driver actually saw when it injected the fault (the step may have been missed). */
  reached: string;
  violations: Violation[];
  /** Things that are not invariants but worth reading (e.g. "restart failed once, started on the second try"). */
  notes: string[];
  expectedToFailUntil?: string;
  durationSeconds: number;
}

const ROOT = resolve(import.meta.dirname, '..', '..', '..');
export const RESULTS_FILE = join(ROOT, 'test-results', 'fault-matrix.json');

export function outcomeOf(violations: Violation[], expectedToFailUntil?: string): CaseResult['outcome'] {
  if (expectedToFailUntil) return violations.length ? 'xfail' : 'xpass';
  return violations.length ? 'fail' : 'pass';
}

const LABEL: Record<CaseResult['outcome'], string> = {
  pass: 'pass',
  fail: 'FAIL',
  xfail: 'FAIL (expected)',
  xpass: 'pass (expected to fail)',
  error: 'ERROR',
};

/** The matrix as text: one row per case, then the broken invariants and notes of each case that has any. */
export function formatMatrix(results: CaseResult[]): string {
  const faults = [...new Set(results.map((r) => r.fault))];
  const steps = [...new Set(results.map((r) => r.step))];
  const cell = (f: string, s: string) => {
    const r = results.find((x) => x.fault === f && x.step === s);
    if (!r) return '—';
    const inv = [...new Set(r.violations.map((v) => v.invariant))].join(',');
    return inv ? `${LABEL[r.outcome]}: ${inv}` : LABEL[r.outcome];
  };
  const header = ['fault \\ step', ...steps];
  const rows = faults.map((f) => [f, ...steps.map((s) => cell(f, s))]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cols: string[]) => '| ' + cols.map((c, i) => c.padEnd(widths[i]!)).join(' | ') + ' |';
  const out = [line(header), '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|', ...rows.map(line), ''];
  for (const r of results) {
    if (!r.violations.length && !r.notes.length && !r.expectedToFailUntil) continue;
    out.push(`${r.fault} × ${r.step}: ${LABEL[r.outcome]} (${r.durationSeconds.toFixed(0)} s; reached: ${r.reached})`);
    if (r.expectedToFailUntil) out.push(`    expected to fail until: ${r.expectedToFailUntil}`);
    for (const v of r.violations) out.push(`    ✗ ${v.invariant}${v.snapshotId ? ` [${v.snapshotId.slice(0, 8)}]` : ''}: ${v.detail}`);
    for (const n of r.notes) out.push(`    · ${n}`);
  }
  const count = (o: CaseResult['outcome']) => results.filter((r) => r.outcome === o).length;
  out.push(
    `${results.length} case(s): ${count('pass')} pass, ${count('fail')} fail, ${count('xfail')} expected failure(s), ` +
      `${count('xpass')} unexpectedly passing, ${count('error')} error(s)`,
  );
  return out.join('\n');
}

export function writeMatrix(results: CaseResult[]): void {
  mkdirSync(join(ROOT, 'test-results'), { recursive: true });
  writeFileSync(RESULTS_FILE, JSON.stringify({ generatedAt: new Date().toISOString(), full: process.env.FAULTS_FULL === '1', results }, null, 2) + '\n');
}
