import { describe, expect, it } from 'vitest';
import { publicErrorMessage } from '../../domain/errors.js';

describe('publicErrorMessage', () => {
  it('shortens absolute server paths to their last segment, keeping the rest of the message', () => {
    const raw = "backup of /srv/volsnap/primary/kvm-primary-1/a.qcow2 failed: ENOTDIR: not a directory, mkdir '/srv/store/snapshots/x'";
    expect(publicErrorMessage(raw)).toBe("backup of …/a.qcow2 failed: ENOTDIR: not a directory, mkdir '…/x'");
  });
  it('leaves messages without paths alone', () => {
    expect(publicErrorMessage('image store unreachable: 503')).toBe('image store unreachable: 503');
  });
});
