// Keeps one embedded server (PostgreSQL, the Temporal dev server) for a volsnap process. It is started
// detached, in its own session and process group, so a terminal's Ctrl-C or a SIGKILL of the service's process
// group never reaches the server: the service stops it last, after its workers have drained, by closing this
// keeper's stdin. If the service dies instead, stdin closes too (or our parent changes) and the server is
// stopped the same way, so it never outlives its service for long.
//
// argv[2]: JSON {command, args, env?, uid?, gid?, logFile, stopSignals: [[signal, waitMs], ...]}
// stdout:  JSON lines {"event":"started","pid"} and {"event":"exit","code","signal"}
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';

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

const child = spawn(spec.command, spec.args, {
  stdio: ['ignore', log, log],
  env: { ...process.env, ...spec.env },
  ...(spec.uid !== undefined ? { uid: spec.uid, gid: spec.gid } : {}),
});
child.once('error', (err) => {
  send({ event: 'exit', code: null, signal: null, error: err.message });
  process.exit(1);
});
child.once('spawn', () => send({ event: 'started', pid: child.pid }));
child.once('exit', (code, signal) => {
  send({ event: 'exit', code, signal });
  // Let the line reach the service before we go.
  process.stdout.end(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  for (const [signal, waitMs] of spec.stopSignals) {
    if (child.exitCode !== null || child.signalCode !== null) return;
    try {
      child.kill(signal);
    } catch {
      return;
    }
    const exited = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), waitMs);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    if (exited) return;
  }
}

process.stdin.on('data', () => undefined);
process.stdin.once('end', stop);
process.stdin.once('close', stop);
process.stdin.once('error', stop);
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, stop);
// Belt and braces: stdin may be shared by accident; a changed parent means the service is gone.
setInterval(() => {
  if (process.ppid !== parent) stop();
}, 1000).unref();
