/**
 * The pure decisions of post-copy recovery (vms/postcopy-recovery.ts): the note the agents
 * share, the source's steps (ask, resume once, give up past the bound) and the target's
 * (pause, listen, lost), and connectionsTo on sample rows and on the kernel's own table. The real
 * recovery runs in e2e/migration-settings.scenario.test.ts and e2e/postcopy-crash.scenario.test.ts.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import {
  connectionsTo,
  dropRecoveryNote,
  RECOVERY_ANNOTATION,
  recoveryBoundMs,
  recoveryNote,
  resumedAttempt,
  SourceRecovery,
  targetRecoveryAction,
} from './postcopy-recovery.ts';

const note = (v: unknown) => recoveryNote({ [RECOVERY_ANNOTATION]: typeof v === 'string' ? v : JSON.stringify(v) }, 'm1');

test('recoveryNote: only a well-formed note of this migration counts', () => {
  assert.deepEqual(note({ migrationUid: 'm1', attempt: 2 }), { migrationUid: 'm1', attempt: 2 });
  assert.deepEqual(note({ migrationUid: 'm1', attempt: 1, address: '10.0.0.2:4444' }), { migrationUid: 'm1', attempt: 1, address: '10.0.0.2:4444' });
  assert.equal(note({ migrationUid: 'other', attempt: 1 }), undefined, 'another migration');
  assert.equal(note({ migrationUid: 'm1', attempt: 0 }), undefined);
  assert.equal(note({ migrationUid: 'm1', attempt: 1.5 }), undefined);
  assert.equal(note({ migrationUid: 'm1', attempt: 1, address: 'unix:/etc/passwd' }), undefined, 'not host:port');
  assert.equal(note({ migrationUid: 'm1', attempt: 1, address: '10.0.0.2:44 44' }), undefined);
  assert.equal(note('{not json'), undefined);
  assert.equal(recoveryNote(undefined, 'm1'), undefined);
});

test('dropRecoveryNote: the note goes, other annotations stay', () => {
  const meta = { annotations: { [RECOVERY_ANNOTATION]: '{"migrationUid":"m","attempt":1}', keep: 'x' } };
  dropRecoveryNote(meta);
  assert.deepEqual(meta.annotations, { keep: 'x' });
  const none: { annotations?: Record<string, string> } = {};
  dropRecoveryNote(none);
  assert.deepEqual(none, {});
});

test('recoveryBoundMs: 60 s unless the test knob says otherwise; 0 turns recovery off', () => {
  assert.equal(recoveryBoundMs({}), 60_000);
  assert.equal(recoveryBoundMs({ VESSEL_TEST_POSTCOPY_RECOVERY_MS: '20000' }), 20_000);
  assert.equal(recoveryBoundMs({ VESSEL_TEST_POSTCOPY_RECOVERY_MS: '0' }), 0);
  assert.equal(recoveryBoundMs({ VESSEL_TEST_POSTCOPY_RECOVERY_MS: 'x' }), 60_000);
  assert.equal(recoveryBoundMs({ VESSEL_TEST_POSTCOPY_RECOVERY_MS: '-5' }), 60_000);
});

test('SourceRecovery: asks once, resumes once to the address the target published, then waits; recovered resets', () => {
  const r = new SourceRecovery(60_000);
  assert.deepEqual(r.step('postcopy-active', 0, undefined), { action: 'none' });
  assert.equal(r.recovering, false);
  assert.deepEqual(r.step('postcopy-paused', 1000, undefined), { action: 'request', attempt: 1 });
  assert.equal(r.recovering, true);
  assert.deepEqual(r.step('postcopy-paused', 1200, undefined), { action: 'none' }, 'no address yet');
  // A stale note (an earlier attempt's address) is not this attempt's.
  assert.deepEqual(r.step('postcopy-paused', 1400, { migrationUid: 'm1', attempt: 0, address: 'a:1' }), { action: 'none' });
  const published = { migrationUid: 'm1', attempt: 1, address: '10.0.0.2:4444' };
  assert.deepEqual(r.step('postcopy-paused', 1600, published), { action: 'resume', attempt: 1, address: '10.0.0.2:4444' });
  // Its connect may hang (a cut link): no second resume, no new request, while it is outstanding.
  for (let t = 1800; t < 60_000; t += 5000) assert.deepEqual(r.step('postcopy-paused', t, published), { action: 'none' }, `at ${t}`);
  assert.deepEqual(r.step('postcopy-recover', 60_500, published), { action: 'none' }, 'connected: given more time');
  assert.deepEqual(r.step('postcopy-active', 61_000, published), { action: 'recovered', ms: 60_000 });
  assert.equal(r.recovering, false);
  // It breaks again: a fresh bound and a new attempt (the target listens anew).
  assert.deepEqual(r.step('postcopy-paused', 70_000, published), { action: 'request', attempt: 2 });
  assert.deepEqual(r.step('postcopy-paused', 70_200, { ...published, attempt: 2, address: '10.0.0.2:5555' }), {
    action: 'resume',
    attempt: 2,
    address: '10.0.0.2:5555',
  });
});

test('SourceRecovery: gives up past the bound while paused; a refused resume may ask again; bound 0 gives up at once', () => {
  const r = new SourceRecovery(20_000);
  assert.equal(r.step('postcopy-paused', 0, undefined).action, 'request');
  assert.equal(r.step('postcopy-paused', 1000, { migrationUid: 'm', attempt: 1, address: 'h:1' }).action, 'resume');
  r.resumeFailed();
  assert.deepEqual(r.step('postcopy-paused', 2000, { migrationUid: 'm', attempt: 1, address: 'h:1' }), { action: 'request', attempt: 2 });
  assert.deepEqual(r.step('postcopy-paused', 19_999, undefined), { action: 'none' });
  assert.deepEqual(r.step('postcopy-paused', 20_000, undefined), { action: 'give-up', waitedMs: 20_000 });
  // Stuck in postcopy-recover (the link broke again in the handshake): twice the bound.
  const s = new SourceRecovery(20_000);
  s.step('postcopy-paused', 0, undefined);
  assert.deepEqual(s.step('postcopy-recover', 39_999, undefined), { action: 'none' });
  assert.deepEqual(s.step('postcopy-recover', 40_000, undefined), { action: 'give-up', waitedMs: 40_000 });
  assert.deepEqual(new SourceRecovery(0).step('postcopy-paused', 5, undefined), { action: 'give-up', waitedMs: 0 });
  // Not post-copy statuses: nothing to do.
  assert.deepEqual(new SourceRecovery(20_000).step('active', 0, undefined), { action: 'none' });
});

test('targetRecoveryAction: pauses a side that has not seen the break, listens once per attempt, lost past its bound or without recovery', () => {
  const asked = { migrationUid: 'm', attempt: 1 };
  assert.equal(targetRecoveryAction('postcopy-active', undefined, 0, undefined, 0, 90_000), 'none', 'nothing asked');
  assert.equal(targetRecoveryAction('postcopy-active', asked, 0, undefined, 0, 90_000), 'pause', 'a cut link: this side saw nothing');
  assert.equal(targetRecoveryAction('postcopy-paused', asked, 0, 0, 100, 90_000), 'listen');
  assert.equal(targetRecoveryAction('postcopy-paused', asked, 1, 0, 200, 90_000), 'none', 'served already');
  assert.equal(targetRecoveryAction('postcopy-paused', { ...asked, address: 'h:1' }, 0, 0, 200, 90_000), 'none', 'answered (by an agent before this one)');
  assert.equal(targetRecoveryAction('postcopy-recover', asked, 0, 0, 200, 90_000), 'none');
  assert.equal(targetRecoveryAction('postcopy-paused', { ...asked, attempt: 2 }, 1, 0, 300, 90_000), 'listen', 'a new attempt');
  // Paused for longer than its bound (the source's agent silent): lost; not while it still runs post-copy.
  assert.equal(targetRecoveryAction('postcopy-paused', undefined, 0, 0, 89_999, 90_000), 'none');
  assert.equal(targetRecoveryAction('postcopy-paused', asked, 1, 0, 90_000, 90_000), 'lost');
  assert.equal(targetRecoveryAction('postcopy-active', undefined, 0, undefined, 10_000_000, 90_000), 'none');
  // Recovery off (0), or through the relay: a paused target is lost at once, as before.
  assert.equal(targetRecoveryAction('postcopy-paused', asked, 0, 0, 0, 0), 'lost');
  assert.equal(targetRecoveryAction('postcopy-active', asked, 0, undefined, 0, 0), 'none');
});

test('SourceRecovery after an agent restart: waits for a resume that may be connecting, resumes an answer not yet used, waits for an open request', () => {
  const answered = { migrationUid: 'm', attempt: 2, address: 'h:2' };
  // The agent before resumed attempt 2: its connect may still be under way; no second connect, no new request.
  const waiting = new SourceRecovery(60_000, { note: answered, resumed: 2 });
  for (let t = 0; t < 60_000; t += 7000) assert.deepEqual(waiting.step('postcopy-paused', t, answered), { action: 'none' }, `at ${t}`);
  assert.deepEqual(waiting.step('postcopy-active', 61_000, answered), { action: 'recovered', ms: 61_000 });
  assert.deepEqual(waiting.step('postcopy-paused', 62_000, answered), { action: 'request', attempt: 3 }, 'a later break: the next attempt');
  // The target answered, the agent before died before resuming: this one resumes.
  const unused = new SourceRecovery(60_000, { note: answered, resumed: 1 });
  assert.deepEqual(unused.step('postcopy-paused', 0, answered), { action: 'resume', attempt: 2, address: 'h:2' });
  // Asked, not answered yet: waits for the answer (no new attempt, which the target would serve on another port).
  const open = { migrationUid: 'm', attempt: 3 };
  const asked = new SourceRecovery(60_000, { note: open });
  assert.deepEqual(asked.step('postcopy-paused', 0, open), { action: 'none' });
  assert.deepEqual(asked.step('postcopy-paused', 500, { ...open, address: 'h:3' }), { action: 'resume', attempt: 3, address: 'h:3' });
  // Nothing before: as a fresh one.
  assert.deepEqual(new SourceRecovery(60_000, {}).step('postcopy-paused', 0, undefined), { action: 'request', attempt: 1 });
});

test('SourceRecovery.resumeAgain: a resume found not connecting goes again to the same attempt and address', () => {
  const answered = { migrationUid: 'm', attempt: 2, address: 'h:2' };
  // The agent before recorded attempt 2 and died before QEMU took the command: this one is told nothing connects.
  const r = new SourceRecovery(60_000, { note: answered, resumed: 2 });
  assert.equal(r.awaitingConnect, true);
  assert.deepEqual(r.step('postcopy-paused', 0, answered), { action: 'none' });
  r.resumeAgain();
  assert.equal(r.awaitingConnect, false);
  assert.deepEqual(
    r.step('postcopy-paused', 100, answered),
    { action: 'resume', attempt: 2, address: 'h:2' },
    'not a new attempt: the target listens once per break',
  );
  assert.equal(r.awaitingConnect, true);
  assert.deepEqual(r.step('postcopy-paused', 200, answered), { action: 'none' }, 'then waits for that connect');
  // Nothing outstanding: resumeAgain changes nothing.
  const fresh = new SourceRecovery(60_000);
  fresh.resumeAgain();
  assert.deepEqual(fresh.step('postcopy-paused', 0, undefined), { action: 'request', attempt: 1 });
});

test('connectionsTo: the sockets of the table connecting or connected to the address, IPv4 or v4-mapped IPv6', () => {
  const head = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';
  // 10.1.2.3:40000 (0x9C40) seen from 10.1.2.9; a listener; states 02 SYN_SENT, 01 ESTABLISHED, 06 TIME_WAIT.
  const row = (rem: string, st: string) =>
    `   0: 0902010A:D431 ${rem} ${st} 00000000:00000000 01:00000200 00000002     0        0 0 1 0000000000000000 100 0 0 10 0\n`;
  assert.equal(connectionsTo(head + row('0302010A:9C40', '02'), '10.1.2.3:40000'), 1, 'SYN_SENT: a connect under way');
  assert.equal(connectionsTo(head + row('0302010A:9C40', '01'), '10.1.2.3:40000'), 1, 'ESTABLISHED');
  assert.equal(connectionsTo(head + row('0302010A:9C40', '06'), '10.1.2.3:40000'), 0, 'TIME_WAIT: a connection that ended');
  assert.equal(connectionsTo(head + row('0302010A:9C40', '02') + row('0302010A:9C40', '02'), '10.1.2.3:40000'), 2, 'two connects at once');
  assert.equal(connectionsTo(head + row('0302010A:9C41', '02'), '10.1.2.3:40000'), 0, 'another port');
  assert.equal(connectionsTo(head + row('0402010A:9C40', '02'), '10.1.2.3:40000'), 0, 'another host');
  assert.equal(connectionsTo(head + row('0000000000000000FFFF00000302010A:9C40', '02'), '10.1.2.3:40000'), 1, 'v4-mapped in tcp6');
  assert.equal(connectionsTo(row('0302010A:9C40', '02'), '10.1.2.3:40000'), 0, 'the first line is the header');
  assert.equal(connectionsTo(head + row('0302010A:9C40', '02'), 'h:40000'), 0, 'not an IPv4 address');
  assert.equal(connectionsTo('', '10.1.2.3:40000'), 0);
});

test("connectionsTo reads the kernel's own table: a loopback connection is seen while it is open", async () => {
  const server = createServer((s) => s.on('error', () => undefined));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const address = `127.0.0.1:${(server.address() as { port: number }).port}`;
  const table = () => readFile('/proc/self/net/tcp', 'utf8');
  assert.equal(connectionsTo(await table(), address), 0, 'the listener alone is no connection to it');
  const client: Socket = connect({ host: '127.0.0.1', port: Number(address.split(':')[1]) });
  await new Promise<void>((r, j) => client.once('connect', r).once('error', j));
  try {
    assert.equal(connectionsTo(await table(), address), 1, 'the established connection');
  } finally {
    client.destroy();
    await new Promise((r) => server.close(r));
  }
});

test('resumedAttempt: the attempt of this migration only', () => {
  assert.equal(resumedAttempt('m1 3\n', 'm1'), 3);
  assert.equal(resumedAttempt('m2 3', 'm1'), undefined);
  assert.equal(resumedAttempt('m1 x', 'm1'), undefined);
  assert.equal(resumedAttempt('', 'm1'), undefined);
});
