/**
 * The DataSource controller: a golden image is Ready when the claim it names exists and is
 * populated (Bound). `status.source` mirrors the spec, as CDI reports it.
 */
import type { V1beta1DataSource } from '@kubevirt-ui-ext/kubevirt-api/containerized-data-importer';
import type { IoK8sApiCoreV1PersistentVolumeClaim } from '@kubevirt-ui-ext/kubevirt-api/kubernetes';
import type { Client } from '@vessel/client';
import { BY_DATASOURCE_CLAIM, byDataSourceClaim, Controller, type Log, cacheKey, type Informer, setCondition, type Typed, updateStatus } from '@vessel/runtime';
import { refs } from '@vessel/api';

const { DATASOURCES, PVCS } = refs;

type DataSource = Typed<V1beta1DataSource>;
type Claim = Typed<IoK8sApiCoreV1PersistentVolumeClaim>;

export class DataSourceController extends Controller {
  private readonly sources: Informer<DataSource>;
  private readonly pvcs: Informer<Claim>;

  constructor(client: Client, log?: Log) {
    super('datasource', client, log, 1);
    this.sources = this.inform<DataSource>(DATASOURCES).addIndex(BY_DATASOURCE_CLAIM, byDataSourceClaim);
    this.pvcs = this.inform<Claim>(PVCS, (pvc) => this.sources.byIndex(BY_DATASOURCE_CLAIM, cacheKey(pvc)).map(cacheKey));
  }

  protected async reconcile(key: string): Promise<void> {
    const ds = this.sources.get(key);
    if (!ds || ds.metadata.deletionTimestamp) return;
    const src = ds.spec.source?.pvc;
    const ns = src?.namespace ?? ds.metadata.namespace;
    const pvc = src?.name ? this.pvcs.get(`${ns}/${src.name}`) : undefined;
    const phase = pvc?.status?.phase;
    const cond = !src?.name
      ? { status: 'False' as const, reason: 'NoSource', message: 'spec.source.pvc is not set' }
      : !pvc
        ? { status: 'False' as const, reason: 'NotFound', message: `PersistentVolumeClaim ${ns}/${src.name} not found` }
        : phase !== 'Bound'
          ? { status: 'False' as const, reason: 'ImportInProgress', message: `PersistentVolumeClaim ${ns}/${src.name} is ${phase ?? 'Pending'}` }
          : { status: 'True' as const, reason: 'Ready', message: '' };
    await updateStatus(this.client, DATASOURCES, ds.metadata.namespace, ds.metadata.name, (s) => {
      s.source = ds.spec.source ?? {};
      setCondition(s, { type: 'Ready', ...cond });
    });
  }
}
