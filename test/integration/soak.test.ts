import { afterAll, describe, expect, it } from 'vitest';
import { auditEvents, prng, QUICK, runSoak, stopRunningSoaks, summarize, type AuditEvent, type SoakReport } from '../../scripts/soak.js';

/**
 * The concurrency soak, quick variant (`npm run soak -- --quick`): random snapshots and VM/volume operations from
 * several actors at once, image store outages, then an audit of the events table and of storage.
 * `npm run soak` runs the same for three minutes over more VMs.
 */
describe('concurrency soak (quick)', () => {
  // Should the run time out, its stack (PostgreSQL, Temporal dev server) must not outlive the test.
  afterAll(() => stopRunningSoaks());
  it('no forbidden operation ran during a backup, every snapshot settled, storage matches the rows', async () => {
    const report: SoakReport = await runSoak({ ...QUICK, seed: 20241125, log: (m) => console.log(`[soak] ${m}`) });
    const summary = summarize(report);
    console.log(summary);
    expect(report.serverErrors, summary).toEqual([]);
    expect(report.audit.violations, summary).toEqual([]);
    expect(report.audit.unsettled, summary).toEqual([]);
    expect(report.stuck, summary).toEqual([]);
    expect(report.spuriousRefusals, summary).toEqual([]);
    expect(report.storageProblems, summary).toEqual([]);
    expect(report.ok).toBe(true);
    // The run exercised what it is meant to prove: backups overlapped with allowed operations, and the policy
    // refused others.
    expect(report.audit.intervals, summary).toBeGreaterThan(10);
    expect(Object.values(report.audit.opsDuringBackup).reduce((a, b) => a + b, 0), summary).toBeGreaterThan(0);
    expect(report.refusalsDuringBackup, summary).toBeGreaterThan(0);
  }, 240_000);
});

describe('the soak auditor', () => {
  const VM = 'vm-1';
  const ROOT = 'vol-root';
  const DATA = 'vol-data';
  const OTHER = 'vol-other';
  const types = new Map<string, 'ROOT' | 'DATADISK'>([
    [ROOT, 'ROOT'],
    [DATA, 'DATADISK'],
    [OTHER, 'DATADISK'],
  ]);
  let id = 0;
  const ev = (type: string, resourceType: string, resourceId: string, details: Record<string, unknown> = {}): AuditEvent => ({
    id: ++id,
    type,
    resourceType,
    resourceId,
    details,
    created: new Date(),
  });
  const setup = () => [
    ev('VOLUME.CREATE', 'Volume', ROOT, { vmId: VM }),
    ev('VOLUME.CREATE', 'Volume', DATA, { vmId: VM }),
    ev('VOLUME.CREATE', 'Volume', OTHER, { vmId: VM }),
    ev('VM.CREATE', 'VirtualMachine', VM),
  ];
  const requested = (snap: string, volumeId: string) => ev('SNAPSHOT.CREATE', 'Snapshot', snap, { snapshotId: snap, volumeId, asyncBackup: true });
  const to = (snap: string, volumeId: string, state: string) => ev('SNAPSHOT.BACKUP', 'Snapshot', snap, { snapshotId: snap, volumeId, to: state });
  const vmOp = (type: string, details: Record<string, unknown> = {}) => ev(type, 'VirtualMachine', VM, { vmId: VM, ...details });

  it('flags forbidden VM operations inside an interval, and only those', () => {
    const events = [
      ...setup(),
      requested('s1', ROOT),
      vmOp('VM.REBOOT'),
      vmOp('VM.MIGRATE'),
      vmOp('ISO.DETACH'),
      vmOp('VM.DESTROY', { destroyedVolumeIds: [ROOT], detachedVolumeIds: [] }),
      to('s1', ROOT, 'BackedUp'),
      vmOp('VM.MIGRATE'),
    ];
    const r = auditEvents(events, types);
    expect(r.violations.map((v) => events.find((e) => e.id === v.eventId)!.type)).toEqual(['VM.MIGRATE', 'ISO.DETACH', 'VM.DESTROY']);
    expect(r.opsDuringBackup).toEqual({ 'VM.REBOOT': 1 });
    expect(r.unsettled).toEqual([]);
  });

  it('destroy and reinstall are allowed while a DATADISK backs up; detaching that disk is not, another disk is', () => {
    const events = [
      ...setup(),
      requested('s2', DATA),
      vmOp('VOLUME.DETACH', { volumeId: OTHER }),
      vmOp('VOLUME.DETACH', { volumeId: DATA }),
      vmOp('VM.RESTORE', { oldVolumeId: ROOT, volumeId: 'vol-root-2' }),
      to('s2', DATA, 'Error'),
    ];
    const r = auditEvents(events, types);
    expect(r.violations).toHaveLength(1);
    expect(r.violations[0]!.message).toMatch(/VOLUME.DETACH/);
    expect(r.violations[0]!.snapshotId).toBe('s2');
  });

  it('follows attachments: an operation on the old VM after the disk moved away is not judged against it', () => {
    const events = [
      ...setup(),
      vmOp('VOLUME.DETACH', { volumeId: OTHER }),
      requested('s3', OTHER),
      vmOp('VM.MIGRATE'),
      vmOp('VOLUME.ATTACH', { volumeId: OTHER }),
      vmOp('VM.MIGRATE'),
      to('s3', OTHER, 'BackedUp'),
    ];
    const r = auditEvents(events, types);
    expect(r.violations.map((v) => v.eventId)).toEqual([events[events.length - 2]!.id]);
  });

  it('flags volume operations on the volume backing up, deletion of the snapshot in flight, and unsettled snapshots', () => {
    const events = [
      ...setup(),
      requested('s4', DATA),
      ev('VOLUME.RESIZE', 'Volume', OTHER, { volumeId: OTHER }),
      ev('VOLUME.RESIZE', 'Volume', DATA, { volumeId: DATA }),
      ev('VOLUME.MIGRATE', 'Volume', DATA, { volumeId: DATA }),
      ev('SNAPSHOT.DELETE', 'Snapshot', 's4', { snapshotId: 's4', volumeId: DATA, to: 'Destroying' }),
      requested('s5', ROOT),
    ];
    const r = auditEvents(events, types);
    expect(r.violations.map((v) => v.message)).toEqual([
      expect.stringMatching(/VOLUME.RESIZE on Volume vol-data/),
      expect.stringMatching(/VOLUME.MIGRATE on Volume vol-data/),
      expect.stringMatching(/deleted while in flight/),
    ]);
    expect(r.unsettled.sort()).toEqual(['s4', 's5']);
  });

  it('the PRNG is seeded: the same seed gives the same sequence', () => {
    const a = prng(42);
    const b = prng(42);
    const c = prng(43);
    const xs = Array.from({ length: 5 }, () => a());
    expect(Array.from({ length: 5 }, () => b())).toEqual(xs);
    expect(Array.from({ length: 5 }, () => c())).not.toEqual(xs);
  });
});
