/**
 * P6 scale curves (issue 16, item 3): with 1k, 10k and 100k snapshot rows (and their store refs and events) in
 * the database, the latency over real HTTP of the list and event reads, the SSE backlog, the policy check on a
 * busy volume and a storage GC run; each should grow sub-linearly. Rows are added set-based (bench/lib/seed.ts)
 * on P6's own accounts and removed at the end; ANALYZE after each step. At each size, every query a measured
 * request ran is captured and EXPLAINed, so the results show the plan (and any sequential scan of a big table).
 */
import pg from 'pg';
import { check, type BenchContext, type TargetCheck } from './context.js';
import type { HttpClient } from './lib/http.js';
import { ParkWatcher, parkBackups } from './lib/park.js';
import { analyzeSeeded, explain, removeSeeded, seedSnapshots, seedVolumes, type SeedScope } from './lib/seed.js';
import { MiB, ratio, round, summarize, type Summary } from './lib/stats.js';

export const P6_ENDPOINTS = {
  'list.volume': 'GET /snapshots?volumeId=<busy>&limit=100 (first page)',
  'list.volume.deep': 'GET /snapshots?volumeId=<busy>&after=<cursor half-way>&limit=100 (deep page)',
  'list.state': 'GET /snapshots?state=Error (filtered by a rare state, default page)',
  'list.all': 'GET /snapshots (no filter, no limit: the default page)',
  'list.all.deep': 'GET /snapshots?after=<cursor half-way> (no filter, deep page)',
  'list.admin': 'GET /snapshots as admin (every account, no filter: the default page)',
  'events.since': 'GET /events?since=<50 events ago>',
  'sse.backlog': 'GET /events/stream?since=<500 events ago> until `event: ready` (backlog replayed)',
  'policy.busy': 'POST /volumes/<busy>/resize → 409 (backup in flight; inFlightSnapshots + assertAllowed)',
  gc: 'POST /storage/gc (admin; a whole storage GC workflow run)',
} as const;
export type P6Endpoint = keyof typeof P6_ENDPOINTS;

export interface P6Plan {
  sql: string;
  /** Sequential scans of the big tables (snapshots, events, snapshot_store_ref) in the plan. */
  seqScans: string[];
  plan: string[];
}

export interface P6Size {
  snapshots: number;
  events: number;
  storeRefs: number;
  seedSeconds: number;
  latency: Record<string, Summary>;
  /** The first GC run after the step (cleans the step's seeded Error snapshots) and what it did. */
  gcFirst: { ms: number; destroyed: number; reconciled: number; failures: number };
  /** Rows answered by `GET /snapshots` without a limit, and whether X-Next-Cursor named a next page. */
  unlimitedList: { rows: number; nextCursor: boolean };
  sseBacklogEvents: number;
  /** Per request kind: the summed EXPLAIN ANALYZE execution time (ms) of its read queries, without HTTP and JSON. */
  sqlMs: Record<string, number>;
  plans: Record<string, P6Plan[]>;
}

export interface P6Result {
  sizes: P6Size[];
  endpoints: Record<string, string>;
  /** t(largest) / t(smallest), p50 and p99, per endpoint. */
  growth: Record<string, { p50: number; p99: number; sql: number }>;
  sizeRatio: number;
  cleanup: { snapshots: number; events: number };
  notes: string[];
  targets: TargetCheck[];
}

const BIG_TABLES = ['snapshots', 'events', 'snapshot_store_ref'];

/** Captures the SQL the process sends while `fn` runs (every pg client: API and worker activities alike). */
async function capturingQueries<T>(fn: () => Promise<T>): Promise<{ value: T; queries: Array<{ text: string; values: unknown[] }> }> {
  const proto = pg.Client.prototype as unknown as { query: (...a: unknown[]) => unknown };
  const orig = proto.query;
  const queries: Array<{ text: string; values: unknown[] }> = [];
  proto.query = function (this: unknown, ...args: unknown[]) {
    const [config, values] = args as [unknown, unknown];
    const text = typeof config === 'string' ? config : (config as { text?: string } | undefined)?.text;
    const vals = typeof config === 'string' ? values : ((config as { values?: unknown[] } | undefined)?.values ?? values);
    if (text) queries.push({ text, values: Array.isArray(vals) ? vals : [] });
    return orig.apply(this, args);
  };
  try {
    return { value: await fn(), queries };
  } finally {
    proto.query = orig;
  }
}

/** EXPLAIN ANALYZE of the read queries among `queries` (SELECT or read-only WITH, parameterised). */
async function plansOf(ctx: BenchContext, queries: Array<{ text: string; values: unknown[] }>): Promise<P6Plan[]> {
  const out: P6Plan[] = [];
  const seen = new Set<string>();
  for (const q of queries) {
    const text = q.text.trim();
    if (!/^(SELECT|WITH)\b/i.test(text) || /\b(INSERT|UPDATE|DELETE)\b/i.test(text) || /pg_notify|pg_advisory|pg_try_advisory/i.test(text)) continue;
    if (/^SELECT\s+(1|now\(\)|\$1)/i.test(text) || q.values.length === 0 && !/FROM\s+(snapshots|events|snapshot_store_ref)/i.test(text)) continue;
    if (seen.has(text)) continue;
    seen.add(text);
    try {
      const plan = await explain(ctx.stack.pool, text, q.values);
      const seqScans = plan.flatMap((l) => [...l.matchAll(/Seq Scan on (\w+)/g)].map((m) => m[1]!)).filter((t) => BIG_TABLES.includes(t));
      out.push({ sql: text.replace(/\s+/g, ' ').slice(0, 160), seqScans, plan });
    } catch {
      // a statement EXPLAIN cannot take as is (e.g. FOR UPDATE outside a transaction is fine; others are skipped)
    }
  }
  return out;
}

/** Opens the event stream after `since` and waits for `event: ready` (the backlog replayed); counts the backlog. */
async function sseBacklog(client: HttpClient, since: number): Promise<{ ms: number; events: number }> {
  const ac = new AbortController();
  const t = performance.now();
  const res = await client.raw(`/api/v1/events/stream?since=${since}`, { signal: ac.signal, headers: { accept: 'text/event-stream' } });
  if (res.status !== 200 || !res.body) throw new Error(`event stream answered ${res.status}`);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  let events = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error('event stream ended before ready');
      buf += dec.decode(value, { stream: true });
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const msg = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (/^event: ready$/m.test(msg)) return { ms: performance.now() - t, events };
        if (/^id: /m.test(msg)) events++;
      }
    }
  } finally {
    ac.abort();
    await reader.cancel().catch(() => undefined);
  }
}

export async function runP6(ctx: BenchContext): Promise<P6Result> {
  const { quick, log, admin, stack } = ctx;
  const sizes = quick ? [1_000, 10_000] : [1_000, 10_000, 100_000];
  const rounds = quick ? 40 : 120;
  const sseEvery = quick ? 2 : 3;
  const gcRuns = quick ? 3 : 8;
  const errorsPerStep = 20;
  const pool = stack.pool;

  // P6's own accounts: the bench user's lists (other phases) never see the seeded rows.
  const tag = Date.now().toString(36);
  const accounts: Array<{ id: string; client: HttpClient }> = [];
  for (let i = 0; i < 4; i++) {
    const a = (await admin.expect([201], 'POST', '/api/v1/accounts', { name: `p6-${tag}-${i}`, role: 'user' })).body;
    accounts.push({ id: a.id, client: admin.as(a.apiKey) });
  }
  const user = accounts[0]!.client;

  // The busy volume: a real one with a backup in flight, parked the way P1 parks its backups (an unusable image
  // store path, backup.max.attempts=2, backup.retry.interval=3600: the first attempt fails at once, the second
  // waits an hour). Its workflow keeps running, so storage GC's reconciler leaves it alone.
  const busy = (await user.expect([201], 'POST', '/api/v1/volumes', { name: 'p6-busy', sizeBytes: 16 * MiB })).body;
  const unpark = await parkBackups(ctx, 'p6-image-store-blocker');
  let parked: string;
  try {
    parked = (await user.expect([201], 'POST', `/api/v1/volumes/${busy.id}/snapshots`, { asyncBackup: true })).body.id;
    await new ParkWatcher(pool).parked(parked);
  } finally {
    await unpark();
  }
  log(`P6: busy volume ${busy.id} holds backup ${parked} in flight (parked)`);

  const scope: SeedScope = { accountIds: accounts.map((a) => a.id), busyVolumeId: busy.id, volumesPerAccount: 25 };
  const vols = await seedVolumes(pool, scope);
  const out: P6Size[] = [];
  let seeded = 0;
  let cleanup = { snapshots: 0, events: 0 };
  try {
    for (const size of sizes) {
      const t0 = performance.now();
      await seedSnapshots(pool, scope, vols, seeded + 1, size, errorsPerStep);
      seeded = size;
      await analyzeSeeded(pool);
      const seedSeconds = round((performance.now() - t0) / 1000, 1);
      const counts = (
        await pool.query<{ s: number; e: number; r: number }>(
          `SELECT (SELECT count(*) FROM snapshots)::int AS s, (SELECT count(*) FROM events)::int AS e, (SELECT count(*) FROM snapshot_store_ref)::int AS r`,
        )
      ).rows[0]!;
      log(`P6: ${size} seeded snapshots (tables: ${counts.s} snapshots, ${counts.e} events, ${counts.r} store refs) in ${seedSeconds} s`);

      // Cursors: half-way down the busy volume's list and the account's list; events 50 and 500 back.
      const mid = async (where: string, params: unknown[]) =>
        (
          await pool.query<{ id: string }>(
            `SELECT id FROM snapshots WHERE ${where} AND status <> 'Destroyed' ORDER BY created, id
              OFFSET (SELECT count(*) / 2 FROM snapshots WHERE ${where} AND status <> 'Destroyed') LIMIT 1`,
            params,
          )
        ).rows[0]!.id;
      const volCursor = await mid('volume_id = $1', [busy.id]);
      const allCursor = await mid('account_id = $1', [accounts[0]!.id]);
      const eventBack = async (n: number) =>
        Number((await pool.query<{ id: string }>('SELECT id FROM events WHERE account_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1', [accounts[0]!.id, n])).rows[0]!.id) - 1;
      const since50 = await eventBack(49);
      const since500 = await eventBack(499);

      let unlimited = { rows: 0, nextCursor: false };
      const requests: Record<Exclude<P6Endpoint, 'gc' | 'sse.backlog'>, () => Promise<number>> = {
        'list.volume': async () => (await user.expect([200], 'GET', `/api/v1/snapshots?volumeId=${busy.id}&limit=100`)).ms,
        'list.volume.deep': async () => (await user.expect([200], 'GET', `/api/v1/snapshots?volumeId=${busy.id}&after=${volCursor}&limit=100`)).ms,
        'list.state': async () => (await user.expect([200], 'GET', '/api/v1/snapshots?state=Error')).ms,
        'list.all': async () => {
          const r = await user.expect([200], 'GET', '/api/v1/snapshots');
          unlimited = { rows: r.body.length, nextCursor: r.headers.has('x-next-cursor') };
          return r.ms;
        },
        'list.all.deep': async () => (await user.expect([200], 'GET', `/api/v1/snapshots?after=${allCursor}`)).ms,
        'list.admin': async () => (await admin.expect([200], 'GET', '/api/v1/snapshots')).ms,
        'events.since': async () => {
          const r = await user.expect([200], 'GET', `/api/v1/events?since=${since50}`);
          if (r.body.length !== 50) throw new Error(`events since answered ${r.body.length}, expected 50`);
          return r.ms;
        },
        'policy.busy': async () => (await user.expect([409], 'POST', `/api/v1/volumes/${busy.id}/resize`, { sizeBytes: 32 * MiB })).ms,
      };
      const samples: Record<string, number[]> = Object.fromEntries(Object.keys(P6_ENDPOINTS).map((k) => [k, []]));
      // Warm-up (connections, plans, caches), then interleaved rounds so every endpoint sees the same conditions.
      for (const fn of Object.values(requests)) await fn();
      let sseEvents = 0;
      for (let i = 0; i < rounds; i++) {
        for (const [k, fn] of Object.entries(requests)) samples[k]!.push(await fn());
        if (i % sseEvery === 0) {
          const s = await sseBacklog(user, since500);
          samples['sse.backlog']!.push(s.ms);
          sseEvents = s.events;
        }
      }
      // Which plan each request's queries took (captured from one more request of each kind).
      const plans: Record<string, P6Plan[]> = {};
      for (const [k, fn] of Object.entries(requests)) plans[k] = await plansOf(ctx, (await capturingQueries(fn)).queries);
      plans['sse.backlog'] = await plansOf(ctx, (await capturingQueries(() => sseBacklog(user, since500))).queries);

      // Storage GC: the first run cleans the step's seeded Error snapshots; the later ones find nothing to do.
      const first = await capturingQueries(() => admin.expect([200], 'POST', '/api/v1/storage/gc'));
      plans.gc = await plansOf(ctx, first.queries);
      const g = first.value.body;
      const gcFirst = { ms: round(first.value.ms), destroyed: g.destroyed.length, reconciled: g.reconciled.length, failures: g.failures.length };
      for (let i = 0; i < gcRuns; i++) samples.gc!.push((await admin.expect([200], 'POST', '/api/v1/storage/gc')).ms);
      if (g.reconciled.some((r: { snapshotId: string }) => r.snapshotId === parked)) throw new Error('storage GC reconciled the parked backup');

      const latency = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, summarize(v)]));
      out.push({
        snapshots: size,
        events: counts.e,
        storeRefs: counts.r,
        seedSeconds,
        latency,
        gcFirst,
        unlimitedList: unlimited,
        sseBacklogEvents: sseEvents,
        sqlMs: Object.fromEntries(
          Object.entries(plans).map(([k, ps]) => [
            k,
            round(ps.reduce((sum, p) => sum + Number(/Execution Time: ([\d.]+)/.exec(p.plan.find((l) => l.includes('Execution Time')) ?? '')?.[1] ?? 0), 0), 3),
          ]),
        ),
        plans,
      });
      log(
        `P6: ${size}: ` +
          Object.entries(latency)
            .map(([k, s]) => `${k} ${s.p50}/${s.p99}`)
            .join(', ') +
          ` ms (p50/p99); first GC ${gcFirst.ms} ms (${gcFirst.destroyed} destroyed)`,
      );
      const seqs = Object.entries(plans).flatMap(([k, ps]) => ps.filter((p) => p.seqScans.length).map((p) => `${k}: ${p.seqScans.join(',')} in ${p.sql.slice(0, 80)}`));
      if (seqs.length) log(`P6: sequential scans of big tables at ${size}: ${seqs.join(' | ')}`);
    }
  } finally {
    cleanup = await removeSeeded(pool, scope, vols);
    log(`P6: removed ${cleanup.snapshots} seeded snapshots and ${cleanup.events} events`);
  }

  const a = out[0]!;
  const z = out[out.length - 1]!;
  const growth = Object.fromEntries(
    Object.keys(P6_ENDPOINTS).map((k) => [
      k,
      { p50: ratio(z.latency[k]!.p50, a.latency[k]!.p50), p99: ratio(z.latency[k]!.p99, a.latency[k]!.p99), sql: ratio(z.sqlMs[k]!, a.sqlMs[k]!) },
    ]),
  );
  const sizeRatio = z.snapshots / a.snapshots;
  // Sub-linear: a hundredfold of rows may cost at most tenfold (√); the quick run's tenfold at most 3.2×.
  const limit = round(Math.sqrt(sizeRatio), 1);
  const targets: TargetCheck[] = [
    ...Object.entries(growth).map(([k, g]) =>
      check(`P6.growth.${k}`, `P6 ${P6_ENDPOINTS[k as P6Endpoint]}: p50 at ${z.snapshots} / at ${a.snapshots} rows ≤ √${sizeRatio}`, g.p50, '<=', limit),
    ),
    check('P6.unbounded', `P6 GET /snapshots without a limit at ${z.snapshots} rows answers at most the default page (100)`, z.unlimitedList.rows, '<=', 100),
  ];
  const notes = [
    `Seeded per step, on 4 accounts of P6's own (25 fake volumes each, no image on disk) plus the busy volume (a real one): every 10th snapshot is the busy volume's; 1 in 10 Destroyed (refs Destroyed), the rest BackedUp, and the step's last ${errorsPerStep} Error (storage GC cleans them in the first run after the step). Each snapshot has a Primary and an Image store ref and 3 events (4 when Destroyed). ANALYZE after each step. Measured as account 0 (≈ 1/4 of the rows: the busy volume's ≈ 1/10 and its share of the rest).`,
    'The busy volume holds a real backup in flight (a running workflow, parked like P1\'s), so the policy check refuses the resize with 409 and storage GC\'s reconciler leaves it alone.',
    `${rounds} interleaved rounds per size (every endpoint once per round; the SSE backlog every ${sseEvery}th round), after one warm-up request each; storage GC ${gcRuns} runs after the first (which cleans the step's Error snapshots; reported apart).`,
    'Plans: every read query a measured request sent (pg client calls captured in the process) is EXPLAIN ANALYZEd at each size; `seqScans` lists sequential scans of snapshots, events or snapshot_store_ref.',
    '`sqlMs` sums the EXPLAIN ANALYZE execution times of one request\'s read queries (run again right after it, so warm): the database\'s share without HTTP, JSON and the workflow, which dominate the latencies at these sizes and hide a linear query until the tables are far larger. For GC it is the first run\'s queries (those that clean the step\'s Error snapshots included).',
    'The seeded rows (snapshots, refs, events, volumes) are deleted at the end; the accounts and the parked backup stay.',
  ];
  return { sizes: out, endpoints: { ...P6_ENDPOINTS }, growth, sizeRatio, cleanup, notes, targets };
}
