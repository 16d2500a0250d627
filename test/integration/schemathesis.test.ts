import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeResult, fuzzService, SCHEMATHESIS, startFuzzTarget, type FuzzResult } from '../../scripts/fuzz-api.js';

const ROOT = resolve(import.meta.dirname, '..', '..');

/**
 * Bad input at scale, CI budget: schemathesis generates requests from /openapi.json of a real service
 * (`worker/main.ts`, as `npm start` runs it) and the answers are checked for 5xx and for the error shape.
 * `npm run fuzz:api` runs the same driver (scripts/fuzz-api.ts) with 200 examples per operation and the stateful
 * phase too.
 */
// `npm run setup` installs schemathesis; without it this tier fails rather than passing silently.
describe('schemathesis against the running service', () => {
  let starting: ReturnType<typeof startFuzzTarget> | undefined;
  let result: FuzzResult;
  const log = (m: string) => console.log(`[schemathesis] ${m}`);

  beforeAll(async () => {
    if (!existsSync(SCHEMATHESIS)) throw new Error(`${SCHEMATHESIS} is missing: run \`npm run setup\``);
    starting = startFuzzTarget(log);
    const target = await starting;
    result = await fuzzService(target.baseUrl, target.adminKey, {
      maxExamples: 5,
      phases: ['examples', 'coverage', 'fuzzing'],
      seed: 424242,
      reportDir: join(ROOT, 'test-results', 'schemathesis'),
      // Storage work is real: shrinking a qcow2 the fuzzer grew to 16 TiB takes qemu-img ~36 s here.
      requestTimeout: 90,
      log,
    });
    log(describeResult(result));
  }, 240_000);
  afterAll(async () => {
    // Also when beforeAll timed out while the service was still starting: it runs in its own process group.
    const target = await starting?.catch(() => undefined);
    await target?.stop();
  });

  it('reaches the handlers: hundreds of requests, successes and refusals alike', () => {
    expect(result.interactions).toBeGreaterThan(300);
    const count = (pred: (s: number) => boolean) => Object.entries(result.statusCounts).filter(([s]) => pred(Number(s))).reduce((n, [, c]) => n + c, 0);
    // The seeded ids make generated requests land on real VMs, volumes and snapshots, not only on 404s.
    expect(count((s) => s >= 200 && s < 300)).toBeGreaterThan(50);
    expect(count((s) => s === 400)).toBeGreaterThan(50);
    expect(count((s) => s === 409)).toBeGreaterThan(0);
  });

  it('the served document needs no rewrite for a non-JavaScript validator', () => {
    expect(result.documentFixes).toEqual([]);
  });

  it('no request gets a 5xx', () => {
    expect(result.serverErrors, describeResult(result)).toEqual([]);
  });

  it('every refusal carries error.code and error.message', () => {
    expect(result.badErrorBodies, describeResult(result)).toEqual([]);
  });

  it("schemathesis's checks pass (status codes, content types and bodies as declared; invalid data refused)", () => {
    expect(result.exitCode, `${result.output.split('\n').slice(-120).join('\n')}\n${describeResult(result)}`).toBe(0);
  });
});
