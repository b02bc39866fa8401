/**
 * KubeVirt's snapshot and clone API on a real Vessel server (no controllers, no agent: the
 * objects are only stored and validated): discovery and kubectl tables, per-kind validation,
 * immutable specs, the status subresource, authorization of tenants and viewers, and the
 * admission checks that read other objects (a restore's snapshot and running target, a
 * clone's source).
 */
// e2e: light (boots no guest, so scripts/test.sh runs it beside another light file)
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { findByResource } from '@vessel/api';
import { Client, type KubeObject } from '@vessel/client';
import { ApiError } from '../packages/apiserver/errors.ts';
import { admit } from '../packages/apiserver/admission.ts';
import { Resources } from '../packages/apiserver/resources.ts';
import { run, startVessel, vm, type Vessel, rejects } from './harness.ts';

const haveKubectl = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' }).status === 0;

const VMS = findByResource('kubevirt.io', 'v1', 'virtualmachines')!;
const VMIS = findByResource('kubevirt.io', 'v1', 'virtualmachineinstances')!;
const NS = findByResource('', 'v1', 'namespaces')!;
const SNAPSHOTS = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshots')!;
const CONTENTS = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinesnapshotcontents')!;
const RESTORES = findByResource('snapshot.kubevirt.io', 'v1beta1', 'virtualmachinerestores')!;
const CLONES = findByResource('clone.kubevirt.io', 'v1beta1', 'virtualmachineclones')!;

const ADMIN = { name: 'admin', groups: ['system:masters'] };

function snapshot(name: string, source = 'vm1', extra: Record<string, unknown> = {}): KubeObject {
  return {
    apiVersion: 'snapshot.kubevirt.io/v1beta1',
    kind: 'VirtualMachineSnapshot',
    metadata: { name },
    spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: source }, ...extra },
  };
}
function restore(name: string, target: string, snapshotName: string, extra: Record<string, unknown> = {}): KubeObject {
  return {
    apiVersion: 'snapshot.kubevirt.io/v1beta1',
    kind: 'VirtualMachineRestore',
    metadata: { name },
    spec: { target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: target }, virtualMachineSnapshotName: snapshotName, ...extra },
  };
}
function clone(name: string, source: string, target?: string, extra: Record<string, unknown> = {}): KubeObject {
  return {
    apiVersion: 'clone.kubevirt.io/v1beta1',
    kind: 'VirtualMachineClone',
    metadata: { name },
    spec: {
      source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: source },
      ...(target ? { target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: target } } : {}),
      ...extra,
    },
  };
}
/** A VMI as virt-controller would have made it for a VM, in `phase`. */
function vmi(name: string, phase: string): KubeObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name },
    spec: { domain: { devices: {}, resources: { requests: { memory: '64Mi' } } } },
    status: { phase },
  };
}

/** The one cause of a 422, checked for its field and message. */
async function invalidAt(p: Promise<unknown>, field: string, message: RegExp): Promise<void> {
  const e = await rejects(p, 422);
  assert.ok(
    e.causes.some((c) => c.field === field && message.test(c.message ?? '')),
    `no cause at ${field} matching ${message}: ${JSON.stringify(e.causes)}`,
  );
}

describe('snapshot and clone API', () => {
  let v: Vessel;
  let c: Client;
  let resources: Resources;
  before(async () => {
    v = await startVessel({ controllers: false });
    c = v.client;
    resources = new Resources(v.server.store);
    await c.create(VMS, vm('vm1'));
    await c.create(VMS, vm('vm2'));
  });
  after(async () => {
    await v?.close();
  });

  it('serves the four kinds in discovery with KubeVirt names and short names', async () => {
    type Doc = { groupVersion: string; resources: Array<{ name: string; kind: string; namespaced: boolean; shortNames?: string[]; categories?: string[] }> };
    const expect: Array<[string, string, string, string[]]> = [
      ['snapshot.kubevirt.io/v1beta1', 'virtualmachinesnapshots', 'VirtualMachineSnapshot', ['vmsnapshot', 'vmsnapshots']],
      ['snapshot.kubevirt.io/v1beta1', 'virtualmachinesnapshotcontents', 'VirtualMachineSnapshotContent', ['vmsnapshotcontent', 'vmsnapshotcontents']],
      ['snapshot.kubevirt.io/v1beta1', 'virtualmachinerestores', 'VirtualMachineRestore', ['vmrestore', 'vmrestores']],
      ['clone.kubevirt.io/v1beta1', 'virtualmachineclones', 'VirtualMachineClone', ['vmclone', 'vmclones']],
    ];
    for (const [gv, plural, kind, short] of expect) {
      const doc = await c.request<Doc>('GET', `/apis/${gv}`);
      const r = doc.resources.find((x) => x.name === plural);
      assert.ok(r, `${plural} in /apis/${gv}: ${doc.resources.map((x) => x.name).join(' ')}`);
      assert.equal(r.kind, kind);
      assert.equal(r.namespaced, true);
      assert.deepEqual(r.shortNames, short);
      assert.deepEqual(r.categories, ['all']);
      assert.ok(
        doc.resources.some((x) => x.name === `${plural}/status`),
        `${plural}/status`,
      );
    }
  });

  it('stores a valid snapshot and refuses an invalid one with the field', async () => {
    const created = await c.create(SNAPSHOTS, snapshot('snap1', 'vm1', { deletionPolicy: 'Delete', failureDeadline: '5m' }));
    assert.ok(created.metadata?.uid);
    await invalidAt(
      c.create(SNAPSHOTS, { ...snapshot('bad1'), spec: { source: { kind: 'VirtualMachine', name: 'vm1' } } }),
      'spec.source.apiGroup',
      /set apiGroup: kubevirt\.io/,
    );
    await invalidAt(
      c.create(SNAPSHOTS, snapshot('bad2', 'vm1', { source: { apiGroup: 'kubevirt.io', kind: 'DataVolume', name: 'x' } })),
      'spec.source.kind',
      /supported values: "VirtualMachine"/,
    );
    await invalidAt(c.create(SNAPSHOTS, { ...snapshot('bad3'), spec: undefined }), 'spec', /Required value/);
    await rejects(c.get(SNAPSHOTS, 'bad1'), 404);
  });

  it('keeps a snapshot spec immutable, while metadata and status change', async () => {
    const cur = await c.get(SNAPSHOTS, 'snap1');
    await invalidAt(
      c.update(SNAPSHOTS, { ...cur, spec: { source: { apiGroup: 'kubevirt.io', kind: 'VirtualMachine', name: 'vm2' } } }),
      'spec',
      /spec is immutable after creation/,
    );
    await invalidAt(c.patch(SNAPSHOTS, 'snap1', { spec: { deletionPolicy: 'Retain' } }), 'spec', /immutable/);
    const labelled = await c.patch(SNAPSHOTS, 'snap1', { metadata: { labels: { backup: 'nightly' } } });
    assert.equal(labelled.metadata?.labels?.backup, 'nightly');
    const status = {
      phase: 'Succeeded',
      readyToUse: true,
      creationTime: '2024-05-01T10:00:00Z',
      sourceUID: 'u-1',
      virtualMachineSnapshotContentName: 'vmsnapshot-content-1',
      conditions: [{ type: 'Ready', status: 'True', reason: 'Operation complete', lastTransitionTime: '2024-05-01T10:00:00Z' }],
    };
    const done = await c.patch(SNAPSHOTS, 'snap1', { status }, { subresource: 'status' });
    assert.deepEqual(done.status, status);
    // The main resource ignores status; the status subresource ignores spec.
    await c.patch(SNAPSHOTS, 'snap1', { status: { phase: 'Failed' } });
    assert.equal(((await c.get(SNAPSHOTS, 'snap1')).status as { phase: string }).phase, 'Succeeded');
  });

  it('stores snapshot contents with the VM copy and keeps their spec immutable', async () => {
    const content: KubeObject = {
      apiVersion: 'snapshot.kubevirt.io/v1beta1',
      kind: 'VirtualMachineSnapshotContent',
      metadata: { name: 'vmsnapshot-content-1' },
      spec: {
        virtualMachineSnapshotName: 'snap1',
        source: { virtualMachine: { metadata: { name: 'vm1' }, spec: vm('vm1').spec as Record<string, unknown> } },
        volumeBackups: [{ volumeName: 'root', persistentVolumeClaim: { metadata: { name: 'root' }, spec: { resources: { requests: { storage: '1Gi' } } } } }],
      },
    };
    await c.create(CONTENTS, content);
    await invalidAt(c.patch(CONTENTS, 'vmsnapshot-content-1', { spec: { virtualMachineSnapshotName: 'other' } }), 'spec', /immutable/);
    await c.patch(CONTENTS, 'vmsnapshot-content-1', { status: { readyToUse: true, creationTime: '2024-05-01T10:00:00Z' } }, { subresource: 'status' });
  });

  it('validates restores on their own: target, snapshot name, policies, immutability', async () => {
    await invalidAt(
      c.create(RESTORES, restore('r-bad1', 'vm1', 'snap1', { target: { apiGroup: 'kubevirt.io', kind: 'VirtualMachineInstance', name: 'vm1' } })),
      'spec.target.kind',
      /supported values: "VirtualMachine"/,
    );
    await invalidAt(c.create(RESTORES, restore('r-bad2', 'vm1', '')), 'spec.virtualMachineSnapshotName', /Required value/);
    await invalidAt(
      c.create(RESTORES, restore('r-bad3', 'vm1', 'snap1', { targetReadinessPolicy: 'Later' })),
      'spec.targetReadinessPolicy',
      /"StopTarget", "WaitGracePeriod", "FailImmediate", "WaitEventually"/,
    );
    await c.create(RESTORES, restore('r1', 'vm1', 'snap1'));
    await invalidAt(c.patch(RESTORES, 'r1', { spec: { virtualMachineSnapshotName: 'snap2' } }), 'spec', /spec is immutable after creation/);
    const complete = await c.patch(RESTORES, 'r1', { status: { complete: true, restoreTime: '2024-05-01T11:00:00Z' } }, { subresource: 'status' });
    assert.equal((complete.status as { complete: boolean }).complete, true);
  });

  describe('a restore refers to a ready snapshot and a stopped VM', () => {
    before(async () => {
      await c.create(VMIS, vmi('vm1', 'Running'));
      await c.create(VMIS, vmi('vm2', 'Succeeded'));
      await c.create(SNAPSHOTS, snapshot('pending', 'vm1'));
    });

    /** Runs admission as the write path does, against the server's own store. */
    const check = async (obj: KubeObject, ns = 'default'): Promise<ApiError | undefined> => {
      try {
        await admit(ADMIN, resources, RESTORES, { ...obj, metadata: { ...obj.metadata, namespace: ns } });
        return undefined;
      } catch (e) {
        if (e instanceof ApiError) return e;
        throw e;
      }
    };

    it('admission: a running target is refused unless the restore stops it or waits', async () => {
      const e = await check(restore('r2', 'vm1', 'snap1'));
      assert.equal(e?.code, 422);
      assert.deepEqual(e?.details?.causes, [
        {
          reason: 'FieldValueInvalid',
          field: 'spec.target',
          message: 'VirtualMachine vm1 is running: stop it first (vessel stop vm1) or set spec.targetReadinessPolicy: StopTarget',
        },
      ]);
      assert.equal(await check(restore('r2', 'vm1', 'snap1', { targetReadinessPolicy: 'StopTarget' })), undefined);
      assert.equal(await check(restore('r2', 'vm1', 'snap1', { targetReadinessPolicy: 'WaitEventually' })), undefined);
      assert.equal(await check(restore('r2', 'vm2', 'snap1')), undefined, 'a VM whose VMI Succeeded is stopped');
      assert.equal(await check(restore('r2', 'new-vm', 'snap1')), undefined, 'a restore into a new VM');
    });

    it('admission: the snapshot must exist in the namespace and be ready to use', async () => {
      const missing = await check(restore('r3', 'vm2', 'nope'));
      assert.equal(missing?.code, 422);
      assert.deepEqual(
        missing?.details?.causes?.map((x) => x.field),
        ['spec.virtualMachineSnapshotName'],
      );
      assert.match(missing!.details!.causes![0].message, /VirtualMachineSnapshot "nope" does not exist in namespace "default"/);
      await c.create(NS, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'elsewhere' } });
      assert.equal((await check(restore('r3', 'vm2', 'snap1'), 'elsewhere'))?.code, 422, 'snap1 lives in default');
      const pending = await check(restore('r3', 'vm2', 'pending'));
      assert.match(pending?.details?.causes?.[0].message ?? '', /"pending" is not ready to use yet/);
    });

    /** Creates with dryRun=All: admission runs, nothing is stored (these tests leave no trace). */
    const dryCreate = (obj: KubeObject) =>
      c.request('POST', '/apis/snapshot.kubevirt.io/v1beta1/namespaces/default/virtualmachinerestores', { query: { dryRun: 'All' }, body: obj });

    it('through the API: a restore of a running VM is refused on spec.target', async () => {
      await invalidAt(
        dryCreate(restore('r4', 'vm1', 'snap1')),
        'spec.target',
        /^VirtualMachine vm1 is running: stop it first \(vessel stop vm1\) or set spec\.targetReadinessPolicy: StopTarget$/,
      );
      await dryCreate(restore('r4', 'vm1', 'snap1', { targetReadinessPolicy: 'StopTarget' }));
    });

    it('through the API: a restore from a missing snapshot is refused on spec.virtualMachineSnapshotName', async () => {
      await invalidAt(dryCreate(restore('r5', 'vm2', 'nope')), 'spec.virtualMachineSnapshotName', /VirtualMachineSnapshot "nope" does not exist/);
    });
  });

  describe('clones', () => {
    it('stores a valid clone and refuses invalid ones with the field', async () => {
      await c.create(CLONES, clone('c1', 'vm1', 'vm1-copy', { newMacAddresses: { default: '02:00:00:00:00:0a' }, labelFilters: ['*', '!internal/*'] }));
      await c.create(CLONES, clone('c2', 'vm1'));
      await c.create(CLONES, { ...clone('c3', 'x'), spec: { source: { apiGroup: 'snapshot.kubevirt.io', kind: 'VirtualMachineSnapshot', name: 'snap1' } } });
      await invalidAt(c.create(CLONES, clone('c-bad1', 'vm1', 'vm1')), 'spec.target.name', /Target name cannot be equal to source name/);
      await invalidAt(
        c.create(CLONES, clone('c-bad2', 'vm1', 'vm3', { newMacAddresses: { default: '02:00:00:00:00' } })),
        'spec.newMacAddresses.default',
        /interface default has a malformed MAC address/,
      );
      await invalidAt(c.create(CLONES, clone('c-bad3', 'vm1', 'vm3', { annotationFilters: [''] })), 'spec.annotationFilters[0]', /Required value/);
      await invalidAt(
        c.create(CLONES, { ...clone('c-bad4', 'x'), spec: { source: { apiGroup: 'kubevirt.io', kind: 'Pod', name: 'x' } } }),
        'spec.source.kind',
        /"VirtualMachine", "VirtualMachineSnapshot"/,
      );
      await invalidAt(c.patch(CLONES, 'c1', { spec: { newSMBiosSerial: 'x' } }), 'spec', /spec is immutable after creation/);
    });

    it('needs read access to the source: a caller who cannot read it gets a 403 naming the field', async () => {
      const outsider = { name: 'mallory', groups: ['vessel:tenant:elsewhere'] };
      await assert.rejects(admit(outsider, resources, CLONES, { ...clone('c4', 'vm1'), metadata: { name: 'c4', namespace: 'default' } }), (e: unknown) => {
        assert.ok(e instanceof ApiError && e.code === 403, String(e));
        assert.match(e.message, /^spec\.source: cannot clone from default\/vm1: virtualmachines\.kubevirt\.io "vm1" is forbidden: User "mallory"/);
        return true;
      });
    });
  });

  describe('authorization', () => {
    let tenant: Client;
    let viewer: Client;
    before(async () => {
      await c.create(NS, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'team-a' } });
      await c.create(VMS, vm('app'), { namespace: 'team-a' });
      const token = async (user: string, groups: string[]) =>
        (await c.request<{ token: string }>('POST', '/vessel/v1/tokens', { body: { user, groups } })).token;
      tenant = new Client({ ...c.config, token: await token('alice', ['vessel:tenant:team-a']) });
      viewer = new Client({ ...c.config, token: await token('vera', ['vessel:view']) });
    });
    after(() => {
      tenant?.close();
      viewer?.close();
    });

    it('a tenant snapshots, restores and clones in its namespace, and nowhere else', async () => {
      const ns = { namespace: 'team-a' };
      await tenant.create(SNAPSHOTS, snapshot('s1', 'app'), ns);
      await tenant.patch(SNAPSHOTS, 's1', { status: { phase: 'Succeeded', readyToUse: true } }, { ...ns, subresource: 'status' });
      await tenant.create(RESTORES, restore('r1', 'app', 's1'), ns);
      await tenant.create(CLONES, clone('c1', 'app', 'app-copy'), ns);
      assert.deepEqual(
        (await tenant.list(SNAPSHOTS, ns)).items.map((s) => s.metadata?.name),
        ['s1'],
      );
      await tenant.delete(CLONES, 'c1', ns);
      const e = await rejects(tenant.create(SNAPSHOTS, snapshot('s2', 'vm1'), { namespace: 'default' }), 403);
      assert.match(e.message, /User "alice" cannot create resource "virtualmachinesnapshots" in API group "snapshot\.kubevirt\.io"/);
      await rejects(tenant.list(CLONES, { namespace: 'default' }), 403);
    });

    it('a viewer reads snapshots, restores and clones but changes nothing', async () => {
      assert.ok((await viewer.list(SNAPSHOTS, { namespace: 'team-a' })).items.length > 0);
      await viewer.get(RESTORES, 'r1', { namespace: 'team-a' });
      await viewer.list(CLONES, { namespace: 'default' });
      await viewer.list(CONTENTS, { namespace: 'default' });
      await rejects(viewer.create(SNAPSHOTS, snapshot('s3', 'app'), { namespace: 'team-a' }), 403);
      await rejects(viewer.delete(SNAPSHOTS, 's1', { namespace: 'team-a' }), 403);
    });
  });

  describe('kubectl', { skip: haveKubectl ? false : process.env.CI ? false : 'kubectl is not installed' }, () => {
    const kubectl = async (args: string[]) => {
      const r = await run('kubectl', ['--kubeconfig', v.kubeconfig, ...args]);
      assert.equal(r.code, 0, `kubectl ${args.join(' ')} failed: ${r.err}`);
      return r.out;
    };

    it('lists the kinds in api-resources', async () => {
      const out = await kubectl(['api-resources', '--api-group=snapshot.kubevirt.io']);
      assert.match(out, /virtualmachinesnapshots\s+vmsnapshot,vmsnapshots\s+snapshot\.kubevirt\.io\/v1beta1\s+true\s+VirtualMachineSnapshot/);
      assert.match(
        out,
        /virtualmachinesnapshotcontents\s+vmsnapshotcontent,vmsnapshotcontents\s+snapshot\.kubevirt\.io\/v1beta1\s+true\s+VirtualMachineSnapshotContent/,
      );
      assert.match(out, /virtualmachinerestores\s+vmrestore,vmrestores\s+snapshot\.kubevirt\.io\/v1beta1\s+true\s+VirtualMachineRestore/);
      assert.match(
        await kubectl(['api-resources', '--api-group=clone.kubevirt.io']),
        /virtualmachineclones\s+vmclone,vmclones\s+clone\.kubevirt\.io\/v1beta1\s+true\s+VirtualMachineClone/,
      );
    });

    it('`get vmsnapshot,vmrestore,vmclone` prints the KubeVirt columns', async () => {
      const out = await kubectl(['get', 'vmsnapshot,vmrestore,vmclone']);
      // KubeVirt's CRDs declare their columns without an Age, so kube-apiserver shows none: nor does Vessel.
      assert.match(out, /^NAME\s+SOURCEKIND\s+SOURCENAME\s+PHASE\s+READYTOUSE\s+CREATIONTIME\s+ERROR$/m);
      assert.match(out, /^virtualmachinesnapshot\.snapshot\.kubevirt\.io\/snap1\s+VirtualMachine\s+vm1\s+Succeeded\s+true\s+\d+[smhdy]/m);
      assert.match(out, /^NAME\s+TARGETKIND\s+TARGETNAME\s+COMPLETE\s+RESTORETIME\s+ERROR$/m);
      assert.match(out, /^virtualmachinerestore\.snapshot\.kubevirt\.io\/r1\s+VirtualMachine\s+vm1\s+true\s+\d+[smhdy]/m);
      assert.match(out, /^NAME\s+PHASE\s+SOURCEVIRTUALMACHINE\s+TARGETVIRTUALMACHINE$/m);
      assert.match(out, /^virtualmachineclone\.clone\.kubevirt\.io\/c1\s+vm1\s+vm1-copy\b/m);
      const contents = await kubectl(['get', 'vmsnapshotcontents']);
      assert.match(contents, /^NAME\s+READYTOUSE\s+CREATIONTIME\s+ERROR$/m);
      assert.match(contents, /^vmsnapshot-content-1\s+true\s+\d+[smhdy]/m);
    });

    it('explains the spec of a snapshot and of a clone from the served OpenAPI', async () => {
      const snap = await kubectl(['explain', 'vmsnapshot.spec']);
      assert.match(snap, /KIND:\s+VirtualMachineSnapshot/);
      assert.match(snap, /source\s+<TypedLocalObjectReference> -required-/);
      const cl = await kubectl(['explain', 'vmclone.spec.newMacAddresses']);
      assert.match(cl, /NewMacAddresses manually sets that target interfaces' mac addresses/);
    });
  });
});
