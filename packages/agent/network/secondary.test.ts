import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkIfname } from './exec.ts';
import { secondaryAlias, secondaryNames } from './secondary.ts';
import { isTapName, tapName } from './taps.ts';

test('secondary link names: stable per namespace/name/iface, valid interface names, never a cluster tap', () => {
  const a = secondaryNames('a', 'vm', 'lan');
  assert.deepEqual(a, secondaryNames('a', 'vm', 'lan'));
  assert.notEqual(a.port, secondaryNames('a', 'vm', 'lan2').port);
  assert.notEqual(a.port, secondaryNames('b', 'vm', 'lan').port);
  const hash = a.port.slice(3);
  assert.deepEqual(a, { port: `vsn${hash}`, veth: `vsv${hash}`, bridge: `vsk${hash}`, tap: `vst${hash}` });
  for (const n of Object.values(a)) {
    assert.equal(n.length, 14);
    assert.equal(checkIfname(n), n);
    assert.equal(isTapName(n), false);
  }
  assert.notEqual(tapName('a', 'vm'), a.port);
  // One alias per VMI, whatever the interface: what release and collect match.
  assert.match(secondaryAlias('a', 'vm'), /^vessel-nad:[0-9a-f]{16}$/);
  assert.notEqual(secondaryAlias('a', 'vm'), secondaryAlias('a', 'vm2'));
});
