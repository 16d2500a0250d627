import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { freePort, restartablePort } from '../../harness/ports.js';

/** The kernel's ephemeral range: ports it hands to listen(0) and to outgoing connections. */
function ephemeralRange(): [number, number] {
  const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  return [low!, high!];
}

describe('ports for servers a test restarts', () => {
  it('lie outside the ephemeral range, so no other process is handed one while its server is down', async () => {
    const [low, high] = ephemeralRange();
    const ports = [];
    for (let i = 0; i < 50; i++) ports.push(await restartablePort());
    for (const p of ports) expect(p < low || p > high, `port ${p} is in ${low}-${high}`).toBe(true);
    expect(new Set(ports).size).toBe(ports.length);
  });

  it('unlike a listen(0) port (what CI found taken after a restart)', async () => {
    const [low, high] = ephemeralRange();
    const p = await freePort();
    expect(p >= low && p <= high).toBe(true);
  });
});
