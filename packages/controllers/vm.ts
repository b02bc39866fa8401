/**
 * The VirtualMachine controller. So far its storage duty: each entry of
 * spec.dataVolumeTemplates becomes a DataVolume owned by the VM (KubeVirt creates them
 * whether or not the VM runs, so disks are ready by the time it starts).
 */
import { isStatusError, type Client } from '@vessel/client';
import { Controller, type Log } from './runtime/controller.ts';
import { EventRecorder } from './runtime/events.ts';
import { type Informer, type KubeObject } from './runtime/informer.ts';
import { DATAVOLUMES, VMS } from './refs.ts';

type Obj = Record<string, unknown>;

export class VirtualMachineController extends Controller {
  private readonly vms: Informer;
  private readonly dvs: Informer;
  private readonly events: EventRecorder;

  constructor(client: Client, log?: Log) {
    super('vm', client, log);
    this.events = new EventRecorder(client, 'virtualmachine-controller');
    this.vms = this.inform(VMS);
    this.dvs = this.inform(DATAVOLUMES, (dv) => ownerVm(dv));
  }

  protected async reconcile(key: string): Promise<void> {
    const vm = this.vms.get(key);
    if (!vm || vm.metadata.deletionTimestamp) return;
    const templates = ((vm.spec as Obj | undefined)?.dataVolumeTemplates as { metadata?: Obj; spec?: Obj }[] | undefined) ?? [];
    for (const t of templates) {
      const name = String(t.metadata?.name ?? '');
      if (!name || this.dvs.get(`${vm.metadata.namespace}/${name}`)) continue;
      const meta = t.metadata ?? {};
      try {
        await this.client.create(DATAVOLUMES, {
          apiVersion: 'cdi.kubevirt.io/v1beta1', kind: 'DataVolume',
          metadata: {
            name, namespace: vm.metadata.namespace,
            labels: { ...(meta.labels as Record<string, string> | undefined), 'kubevirt.io/created-by': vm.metadata.uid ?? '' },
            annotations: meta.annotations as Record<string, string> | undefined,
            ownerReferences: [{ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', name: vm.metadata.name, uid: vm.metadata.uid, controller: true, blockOwnerDeletion: true }],
          },
          spec: t.spec,
        }, { namespace: vm.metadata.namespace });
        await this.events.record(vm, 'Normal', 'SuccessfulDataVolumeCreate', `Created DataVolume ${name}`);
      } catch (e) {
        if (isStatusError(e, 'AlreadyExists')) continue;
        await this.events.record(vm, 'Warning', 'FailedDataVolumeCreate', `Error creating DataVolume ${name}: ${e instanceof Error ? e.message : e}`);
        throw e;
      }
    }
  }
}

function ownerVm(o: KubeObject): string[] {
  const refs = (o.metadata.ownerReferences as { kind: string; name: string; controller?: boolean }[] | undefined) ?? [];
  return refs.filter((r) => r.kind === 'VirtualMachine' && r.controller).map((r) => `${o.metadata.namespace}/${r.name}`);
}
