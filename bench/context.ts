/** What every bench phase gets: the running stack, HTTP clients, the mode, and a progress logger. */
import type { TestStack } from '../harness/stack.js';
import type { HttpClient } from './lib/http.js';

export interface BenchContext {
  quick: boolean;
  stack: TestStack;
  /** Admin key client (configuration, image store tweaks). */
  admin: HttpClient;
  /** An ordinary user account's client: the snapshots and VM actions are measured as this user. */
  user: HttpClient;
  /** A volume's image path (an admin's view: an ordinary user's answers carry no server paths). */
  volumePath(volumeId: string): Promise<string>;
  /** Scratch space on the same file system as the stack's data dir. */
  scratchDir: string;
  /** TCP connections the API server accepted so far, and how many are open now (keep-alive reuse, real concurrency). */
  httpConnections?: () => { accepted: number; open: number };
  log(msg: string): void;
}

/** A target: the figure measured, the limit, and whether it was met. */
export interface TargetCheck {
  id: string;
  description: string;
  value: number;
  limit: number;
  comparison: '<=' | '>=';
  met: boolean;
  note?: string;
}

export function check(id: string, description: string, value: number, comparison: '<=' | '>=', limit: number, note?: string): TargetCheck {
  const met = Number.isFinite(value) && (comparison === '<=' ? value <= limit : value >= limit);
  return { id, description, value, limit, comparison, met, ...(note ? { note } : {}) };
}

/** Polls `fn` until it returns a truthy value; throws after `timeoutMs`. */
export async function waitUntil<T>(fn: () => Promise<T | null | undefined | false>, timeoutMs: number, what: string, everyMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
