// Keeps one embedded server (PostgreSQL, the Temporal dev server) for a volsnap process. It is started
// detached, in its own session and process group, so a terminal's Ctrl-C or a SIGKILL of the service's process
// group never reaches the server: the service stops it last, after its workers have drained, by closing this
// keeper's stdin. If the service dies instead, stdin closes too (or our parent changes) and the server is
// stopped the same way, so it never outlives its service for long.
//
// Supervision: once the service writes the line `supervise` to our stdin (it does so when the server is up, so
// a server that fails to start is reported as before), a server that exits without being asked to stop (a crash,
// the OOM killer, an operator's `kill`) is started again with the same command, after 1 s, doubling up to 10 s
// while restarts follow each other. After RESTART_MAX restarts within RESTART_WINDOW_MS we give up: the exit is
// reported as final and the keeper exits, as it does without supervision.
//
// argv[2]: JSON {command, args, env?, uid?, gid?, logFile, stopSignals: [[signal, waitMs], ...]}
// stdin:   lines; `supervise` turns restarts on; its end (or close) means stop
// stdout:  JSON lines {"event":"started","pid"}; under supervision {"event":"died","code","signal","restartInMs"}
//          and {"event":"restarted","pid","code","signal","restarts"}; last {"event":"exit","code","signal"}
//          (with "gaveUp":true when it exited once too often)
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { createInterface } from 'node:readline';

const RESTART_FIRST_DELAY_MS = 1000;
const RESTART_MAX_DELAY_MS = 10_000;
const RESTART_MAX = 5;
const RESTART_WINDOW_MS = 60_000;

const spec = JSON.parse(process.argv[2]);
const log = openSync(spec.logFile, 'a');
const parent = process.ppid;

const send = (msg) => {
  try {
    process.stdout.write(`${JSON.stringify(msg)}\n`);
  } catch {
    // the service is gone: nobody to tell
  }
};
process.stdout.on('error', () => undefined);

/** The last words: tell the service and go (letting the line reach it first). */
function finish(msg) {
  send({ event: 'exit', ...msg });
  process.stdout.end(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}

let child = null;
let supervising = false;
let stopping = false;
let restartTimer = null;
/** When each restart happened, for the give-up window. */
let restartTimes = [];
let lastExit = { code: null, signal: null };

function run(restart) {
  const c = spawn(spec.command, spec.args, {
    stdio: ['ignore', log, log],
    env: { ...process.env, ...spec.env },
    ...(spec.uid !== undefined ? { uid: spec.uid, gid: spec.gid } : {}),
  });
  child = c;
  let gone = false;
  c.once('error', (err) => {
    if (gone) return;
    gone = true;
    if (!restart) {
      send({ event: 'exit', code: null, signal: null, error: err.message });
      process.exit(1);
    }
    exited(null, null, err.message);
  });
  c.once('spawn', () => {
    if (restart) send({ event: 'restarted', pid: c.pid, code: lastExit.code, signal: lastExit.signal, restarts: restartTimes.length });
    else send({ event: 'started', pid: c.pid });
  });
  c.once('exit', (code, signal) => {
    if (gone) return;
    gone = true;
    exited(code, signal);
  });
}

function exited(code, signal, error) {
  lastExit = { code, signal, ...(error ? { error } : {}) };
  if (stopping || !supervising) return finish(lastExit);
  const now = Date.now();
  restartTimes = restartTimes.filter((t) => now - t < RESTART_WINDOW_MS);
  if (restartTimes.length >= RESTART_MAX) return finish({ ...lastExit, gaveUp: true, restarts: restartTimes.length });
  const restartInMs = Math.min(RESTART_FIRST_DELAY_MS * 2 ** restartTimes.length, RESTART_MAX_DELAY_MS);
  send({ event: 'died', ...lastExit, restartInMs });
  child = null;
  restartTimer = setTimeout(() => {
    restartTimer = null;
    if (stopping) return;
    restartTimes.push(Date.now());
    run(true);
  }, restartInMs);
}

async function stop() {
  if (stopping) return;
  stopping = true;
  // Between a death and its restart there is nothing to stop.
  if (restartTimer) {
    clearTimeout(restartTimer);
    restartTimer = null;
    return finish(lastExit);
  }
  const c = child;
  if (!c) return;
  for (const [signal, waitMs] of spec.stopSignals) {
    if (c.exitCode !== null || c.signalCode !== null) return;
    try {
      c.kill(signal);
    } catch {
      return;
    }
    const done = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), waitMs);
      c.once('exit', () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    if (done) return;
  }
}

run(false);

createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'supervise') supervising = true;
});
process.stdin.once('end', stop);
process.stdin.once('close', stop);
process.stdin.once('error', stop);
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, stop);
// Belt and braces: stdin may be shared by accident; a changed parent means the service is gone.
setInterval(() => {
  if (process.ppid !== parent) stop();
}, 1000).unref();
