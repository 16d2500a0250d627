import { describe, expect, it } from 'vitest';
import { checkRegion, WORKLOAD, workloadBlock } from '../support/guest-workload.js';

const { slots, blockSize } = WORKLOAD;

/** The region as the guest leaves it once it has written seq 0..maxSeq. */
function region(maxSeq: number): Buffer {
  const buf = Buffer.alloc(slots * blockSize);
  for (let seq = Math.max(0, maxSeq - slots + 1); seq <= maxSeq; seq++) workloadBlock(seq).copy(buf, (seq % slots) * blockSize);
  return buf;
}
const put = (buf: Buffer, slot: number, block: Buffer) => block.copy(buf, slot * blockSize);

/** The verifier of the test guest's workload: which regions are states the disk had. */
describe('guest workload verifier', () => {
  it('accepts the states the guest passes through: part of the first wave, a full wave, a wave partly overwritten', () => {
    expect(checkRegion(region(9))).toEqual({ ok: true, maxSeq: 9, written: 10, problems: [] });
    expect(checkRegion(region(slots - 1))).toEqual({ ok: true, maxSeq: slots - 1, written: slots, problems: [] });
    expect(checkRegion(region(3 * slots + 17))).toEqual({ ok: true, maxSeq: 3 * slots + 17, written: slots, problems: [] });
  });

  it('refuses an empty region', () => {
    expect(checkRegion(Buffer.alloc(slots * blockSize))).toMatchObject({ ok: false, maxSeq: -1, problems: ['no workload block written'] });
  });

  it('refuses a torn block, a block in the wrong slot, a hole, and blocks of two instants', () => {
    const torn = region(100);
    torn.fill(0x55, 10 * blockSize + 1000, 10 * blockSize + 2000);
    expect(checkRegion(torn).problems).toEqual([expect.stringMatching(/^slot 10: seq=74: checksum mismatch/)]);

    const misplaced = region(100);
    put(misplaced, 20, workloadBlock(85));
    expect(checkRegion(misplaced).problems).toEqual(['slot 20: holds seq=85 slot=21 of=64 (misplaced)']);

    const hole = region(100);
    hole.fill(0, 5 * blockSize, 6 * blockSize);
    expect(checkRegion(hole).problems).toEqual(['slot 5: unwritten, but seq=69 was written before seq=100']);

    // A block from the next wave beside the current one: newer than a block the guest wrote after it.
    const twoInstants = region(100);
    put(twoInstants, 50, workloadBlock(50 + 2 * slots));
    expect(checkRegion(twoInstants).ok).toBe(false);
    expect(checkRegion(twoInstants).maxSeq).toBe(50 + 2 * slots);

    // A block of the first wave where the guest had written it over.
    const stale = region(100);
    put(stale, 30, workloadBlock(30));
    expect(checkRegion(stale).problems).toEqual(['slot 30: seq=30, not seq=94 (not one instant with seq=100)']);

    // Before the first wave reaches a slot it is still zero: a block there is from elsewhere.
    const early = region(9);
    put(early, 40, workloadBlock(40));
    expect(checkRegion(early).problems).toEqual(Array.from({ length: 30 }, (_, i) => `slot ${i + 10}: unwritten, but seq=${i + 10} was written before seq=40`));
  });
});
