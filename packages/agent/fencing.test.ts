/** The self-fencing decision: API server, peer quorum, timeout, recovery. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Fencer, type Peer, type PeerAnswer } from './fencing.ts';

function setup(peers: PeerAnswer[]) {
  const state = { api: true, now: 0, peers, fenced: [] as string[], recovered: [] as string[] };
  const fencer = new Fencer({
    apiReachable: async () => state.api,
    peers: () => state.peers.map((_, i): Peer => ({ name: `n${i}`, check: async () => state.peers[i] })),
    fence: async (reason) => {
      state.fenced.push(reason);
      return 2;
    },
    recovered: async (reason) => {
      state.recovered.push(reason);
    },
    timeoutMs: 8000,
    now: () => state.now,
  });
  return { state, fencer };
}

test('cut off from the API server and every peer: fences once after the timeout, records it when the API server is back', async () => {
  const { state, fencer } = setup(['unreachable', 'unreachable']);
  assert.equal(await fencer.tick(), 'ok');
  state.api = false;
  state.now = 7000;
  assert.equal(await fencer.tick(), 'waiting');
  assert.equal(fencer.apiOk, false);
  state.now = 8000;
  assert.equal(await fencer.tick(), 'fenced');
  assert.equal(state.fenced.length, 1);
  assert.match(state.fenced[0], /0 of 2 peer agents/);
  state.now = 9000;
  assert.equal(await fencer.tick(), 'fenced');
  assert.equal(state.fenced.length, 1, 'fenced once');
  state.api = true;
  assert.equal(await fencer.tick(), 'ok');
  assert.deepEqual(state.recovered, state.fenced);
  assert.equal(fencer.fenced, false);
});

test('an API outage a majority shares (a peer reachable, not reaching the API server either): nothing stops', async () => {
  const { state, fencer } = setup(['reachable', 'unreachable']);
  state.api = false;
  state.now = 60_000;
  assert.equal(await fencer.tick(), 'quorum');
  assert.equal(state.fenced.length, 0);
});

test('two nodes: the other one unreachable as well as the API server is a fence', async () => {
  const { state, fencer } = setup(['unreachable']);
  state.api = false;
  state.now = 10_000;
  assert.equal(await fencer.tick(), 'fenced');
});

test('a node without peers never fences', async () => {
  const { state, fencer } = setup([]);
  state.api = false;
  state.now = 600_000;
  assert.equal(await fencer.tick(), 'alone');
  assert.equal(state.fenced.length, 0);
});

test('four nodes: one reachable peer of three is not a quorum (2 of 4)', async () => {
  const { state, fencer } = setup(['reachable', 'unreachable', 'unreachable']);
  state.api = false;
  state.now = 10_000;
  assert.equal(await fencer.tick(), 'fenced');
});

test('a reachable peer that reaches the API server: the control plane sees this node silent, so it fences', async () => {
  const { state, fencer } = setup(['reachesApi', 'reachable']);
  state.api = false;
  state.now = 7000;
  assert.equal(await fencer.tick(), 'waiting');
  state.now = 8000;
  assert.equal(await fencer.tick(), 'fenced');
  assert.match(state.fenced[0], /one of them reaches the API server/);
});
