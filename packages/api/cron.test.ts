import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cronProblem, nextTick, parseCron } from './cron.ts';

const next = (expr: string, iso: string) => nextTick(parseCron(expr), new Date(iso))?.toISOString();

test('every minute ticks at the next whole minute', () => {
  assert.equal(next('* * * * *', '2026-01-01T10:00:30Z'), '2026-01-01T10:01:00.000Z');
  assert.equal(next('* * * * *', '2026-01-01T10:01:00Z'), '2026-01-01T10:02:00.000Z');
});

test('ranges, steps and lists', () => {
  assert.equal(next('*/15 * * * *', '2026-01-01T10:16:00Z'), '2026-01-01T10:30:00.000Z');
  assert.equal(next('5,10 * * * *', '2026-01-01T10:06:00Z'), '2026-01-01T10:10:00.000Z');
  assert.equal(next('0 9-17/4 * * *', '2026-01-01T14:00:00Z'), '2026-01-01T17:00:00.000Z');
  assert.equal(next('30 2 * * *', '2026-01-01T03:00:00Z'), '2026-01-02T02:30:00.000Z');
  assert.deepEqual([...parseCron('10/20 * * * *').minutes], [10, 30, 50]);
});

test('month and weekday names; 7 is Sunday; both day fields restricted match either', () => {
  // 2026-01-01 is a Thursday.
  assert.equal(next('0 0 * * MON', '2026-01-01T00:00:00Z'), '2026-01-05T00:00:00.000Z');
  assert.equal(next('0 0 * * 7', '2026-01-01T00:00:00Z'), '2026-01-04T00:00:00.000Z');
  assert.equal(next('0 0 1 mar *', '2026-01-01T00:00:00Z'), '2026-03-01T00:00:00.000Z');
  assert.equal(next('0 0 15 * FRI', '2026-01-01T00:00:00Z'), '2026-01-02T00:00:00.000Z');
  assert.equal(next('0 0 29 2 *', '2026-03-01T00:00:00Z'), '2028-02-29T00:00:00.000Z');
  assert.equal(next('0 0 30 2 *', '2026-03-01T00:00:00Z'), undefined);
});

test('descriptors', () => {
  assert.equal(next('@hourly', '2026-01-01T10:20:00Z'), '2026-01-01T11:00:00.000Z');
  assert.equal(next('@daily', '2026-01-01T10:20:00Z'), '2026-01-02T00:00:00.000Z');
  assert.equal(next('@weekly', '2026-01-01T10:20:00Z'), '2026-01-04T00:00:00.000Z');
  assert.equal(next('@monthly', '2026-01-01T10:20:00Z'), '2026-02-01T00:00:00.000Z');
  assert.equal(next('@yearly', '2026-01-01T10:20:00Z'), '2027-01-01T00:00:00.000Z');
});

test('invalid schedules say what is wrong', () => {
  assert.match(cronProblem('* * * *')!, /5 fields/);
  assert.match(cronProblem('60 * * * *')!, /minute "60" is out of range 0-59/);
  assert.match(cronProblem('* * * * * *')!, /not 6/);
  assert.match(cronProblem('5-1 * * * *')!, /before its start/);
  assert.match(cronProblem('*/0 * * * *')!, /step/);
  assert.match(cronProblem('@sometimes')!, /unknown descriptor/);
  assert.match(cronProblem('x * * * *')!, /not a number/);
  assert.match(cronProblem('* * * FOO *')!, /not a number or a name/);
  assert.equal(cronProblem('0 */12 * * *'), undefined);
});
