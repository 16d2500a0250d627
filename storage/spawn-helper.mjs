/**
 * The spawn helper (forked once by storage/exec.ts): starts commands on request over IPC, so the large service
 * process never forks itself. Forking copies the parent's page tables, which blocks a ~450 MiB Node process's
 * event loop for 10-20 ms per qemu-img call (bench/README.md); this process stays small. Plain JavaScript so it
 * starts without the TypeScript loader.
 *
 * Messages in:  {type: 'run', id, file, args, streamStdout}, {type: 'kill', id}
 * Messages out: {type: 'stdout', id, chunk}, {type: 'exit', id, code, signal, stdout, stderr, error}
 */
import { spawn } from 'node:child_process';

/** @type {Map<number, import('node:child_process').ChildProcess>} */
const children = new Map();

const send = (msg) => {
  if (process.connected) process.send(msg);
};

function start({ id, file, args, streamStdout }) {
  let settled = false;
  const out = [];
  const err = [];
  const finish = (fields) => {
    if (settled) return;
    settled = true;
    children.delete(id);
    send({ type: 'exit', id, stdout: out.join(''), stderr: err.join(''), code: null, signal: null, error: null, ...fields });
  };
  let child;
  try {
    child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    finish({ error: { message: e.message, code: e.code ?? null } });
    return;
  }
  children.set(id, child);
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (chunk) => {
    out.push(chunk);
    if (streamStdout) send({ type: 'stdout', id, chunk });
  });
  child.stderr.on('data', (chunk) => err.push(chunk));
  // A command that cannot start (ENOENT, EACCES) emits 'error' and may never emit 'close'.
  child.on('error', (e) => {
    if (child.pid === undefined) finish({ error: { message: e.message, code: e.code ?? null } });
  });
  child.on('close', (code, signal) => finish({ code, signal }));
}

process.on('message', (msg) => {
  if (msg?.type === 'run') start(msg);
  else if (msg?.type === 'kill') children.get(msg.id)?.kill('SIGTERM');
});

// The service went away (exit, crash, SIGKILL): stop what it asked for, then go too.
process.on('disconnect', () => {
  for (const child of children.values()) child.kill('SIGTERM');
  process.exit(0);
});
// The service's process group gets SIGTERM/SIGINT on shutdown; the service decides when children stop.
process.on('SIGINT', () => {});
process.on('SIGTERM', () => {});
