/**
 * CPU of this Node process split by thread: the main thread (the one event loop the HTTP API, the workers'
 * activities and the bench client share) against every other thread (the Temporal SDK's workflow threads and
 * Rust core, libuv's pool, V8's GC helpers), and the main thread's event-loop utilization. A main thread near
 * 100 % of one core is saturated even when the process as a whole uses less than the machine's cores.
 */
import { readFileSync } from 'node:fs';
import { performance, type EventLoopUtilization } from 'node:perf_hooks';

const CLK_TCK = 100;

function cpuOf(statPath: string): number {
  const raw = readFileSync(statPath, 'utf8');
  const f = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

export interface ThreadSnapshot {
  at: number;
  main: number;
  process: number;
  elu: EventLoopUtilization;
}

export function threadSnapshot(): ThreadSnapshot {
  return { at: performance.now(), main: cpuOf(`/proc/self/task/${process.pid}/stat`), process: cpuOf('/proc/self/stat'), elu: performance.eventLoopUtilization() };
}

export interface ThreadUsage {
  /** CPU-seconds of the main thread and of all other threads of this process. */
  mainThreadSeconds: number;
  otherThreadsSeconds: number;
  /** Main-thread CPU as a share of one core over the interval. */
  mainThreadShareOfOneCore: number;
  /** performance.eventLoopUtilization() over the interval: the share of time the event loop was not idle. */
  eventLoopUtilization: number;
}

export function threadDiff(a: ThreadSnapshot, b: ThreadSnapshot): ThreadUsage {
  const wall = (b.at - a.at) / 1000;
  const main = b.main - a.main;
  const r = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;
  return {
    mainThreadSeconds: r(main),
    otherThreadsSeconds: r(Math.max(0, b.process - a.process - main)),
    mainThreadShareOfOneCore: r(wall > 0 ? main / wall : Number.NaN, 3),
    eventLoopUtilization: r(performance.eventLoopUtilization(b.elu, a.elu).utilization, 3),
  };
}
