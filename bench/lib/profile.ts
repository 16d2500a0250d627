/** Optional CPU profile of this Node process's main thread per phase (--profile), via the inspector. */
import { writeFileSync, mkdirSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { join, relative } from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples?: number[];
  timeDeltas?: number[];
  startTime: number;
  endTime: number;
}

export interface ProfileSummary {
  file: string;
  sampledMs: number;
  /** Self time by function (top 15), ms and share of the sampled time. */
  top: Array<{ fn: string; selfMs: number; share: number }>;
}

export class PhaseProfiler {
  private session: Session | null = null;
  constructor(private readonly dir: string) {}

  async start(): Promise<void> {
    this.session = new Session();
    this.session.connect();
    await this.session.post('Profiler.enable');
    await this.session.post('Profiler.setSamplingInterval', { interval: 500 });
    await this.session.post('Profiler.start');
  }

  async stop(name: string): Promise<ProfileSummary | null> {
    if (!this.session) return null;
    const { profile } = (await this.session.post('Profiler.stop')) as unknown as { profile: CpuProfile };
    this.session.disconnect();
    this.session = null;
    mkdirSync(this.dir, { recursive: true });
    const file = join(this.dir, `${name}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    const self = new Map<number, number>();
    const samples = profile.samples ?? [];
    const deltas = profile.timeDeltas ?? [];
    for (let i = 0; i < samples.length; i++) self.set(samples[i]!, (self.get(samples[i]!) ?? 0) + (deltas[i] ?? 0));
    const byFn = new Map<string, number>();
    for (const n of profile.nodes) {
      const us = self.get(n.id) ?? 0;
      if (!us) continue;
      const cf = n.callFrame;
      const where = cf.url ? `${cf.url.replace(/^file:\/\//, '').replace(/.*node_modules\//, '')}:${cf.lineNumber + 1}` : '';
      const key = `${cf.functionName || '(anonymous)'}${where ? ` ${where}` : ''}`;
      byFn.set(key, (byFn.get(key) ?? 0) + us);
    }
    const totalUs = [...byFn.values()].reduce((a, b) => a + b, 0);
    const top = [...byFn]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 15)
      .map(([fn, us]) => ({ fn, selfMs: Math.round(us / 1000), share: Math.round((us / totalUs) * 1000) / 1000 }));
    return { file: relative(process.cwd(), file), sampledMs: Math.round(totalUs / 1000), top };
  }
}
