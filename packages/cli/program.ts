/**
 * The `vessel` command line: global flags and one subcommand per verb (commands/<verb>.ts).
 */
import { Command } from 'commander';
import { registerAddVolume } from './commands/addvolume.ts';
import { registerAgent } from './commands/agent.ts';
import { registerApiResources } from './commands/api-resources.ts';
import { registerApply } from './commands/apply.ts';
import { registerClone } from './commands/clone.ts';
import { registerConsole } from './commands/console.ts';
import { registerCreate } from './commands/create.ts';
import { registerDelete } from './commands/delete.ts';
import { registerDescribe } from './commands/describe.ts';
import { registerDrain } from './commands/drain.ts';
import { registerExpose } from './commands/expose.ts';
import { registerGet } from './commands/get.ts';
import { registerGuestInfo } from './commands/guest-info.ts';
import { registerImage } from './commands/image.ts';
import { registerImageUpload } from './commands/image-upload.ts';
import { registerInventory } from './commands/inventory.ts';
import { registerKubeconfig } from './commands/kubeconfig.ts';
import { registerLogs } from './commands/logs.ts';
import { registerMemoryDump } from './commands/memory-dump.ts';
import { registerVmExport } from './commands/vmexport.ts';
import { registerMigrate } from './commands/migrate.ts';
import { registerPlan } from './commands/plan.ts';
import { registerPortForward } from './commands/port-forward.ts';
import { registerRemoveVolume } from './commands/removevolume.ts';
import { registerServer } from './commands/server.ts';
import { registerSnapshot } from './commands/snapshot.ts';
import { registerSsh } from './commands/ssh.ts';
import { registerToken } from './commands/token.ts';
import { registerUp } from './commands/up.ts';
import { registerVersion } from './commands/version.ts';
import { registerVmActions } from './commands/vm-actions.ts';
import { registerVnc } from './commands/vnc.ts';

export function buildProgram(): Command {
  const program = new Command('vessel')
    .description('Vessel: a Kubernetes-compatible API server for KubeVirt virtual machines, and its client')
    .option('--kubeconfig <file>', 'kubeconfig to use (default: $KUBECONFIG, $VESSEL_DATA_DIR/kubeconfig, /var/lib/vessel/kubeconfig, ~/.kube/config)')
    .option('--context <name>', 'kubeconfig context to use (default: its current-context)')
    .option('-n, --namespace <namespace>', "namespace to work in (default: the context's, else default)")
    .showHelpAfterError('(run `vessel --help` or `vessel COMMAND --help` for usage)')
    .configureOutput({ outputError: (text, write) => write(text.replace(/^error:/, 'Error:')) });
  registerApply(program);
  registerGet(program);
  registerDescribe(program);
  registerDelete(program);
  registerCreate(program);
  registerApiResources(program);
  registerKubeconfig(program);
  registerVersion(program);
  registerToken(program);
  registerServer(program);
  registerUp(program);
  registerAgent(program);
  registerImageUpload(program);
  registerInventory(program);
  registerVmActions(program);
  registerGuestInfo(program);
  registerMemoryDump(program);
  registerVmExport(program);
  registerMigrate(program);
  registerDrain(program);
  registerAddVolume(program);
  registerRemoveVolume(program);
  registerConsole(program);
  registerVnc(program);
  registerPortForward(program);
  registerSsh(program);
  registerLogs(program);
  registerSnapshot(program);
  registerClone(program);
  registerExpose(program);
  registerImage(program);
  registerPlan(program);
  return program;
}
