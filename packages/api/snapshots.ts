/**
 * Vessel's annotations on KubeVirt's snapshot objects: the options KubeVirt's API has no field
 * for (set on a VirtualMachineSnapshot by users), and where the node agent keeps a snapshot's
 * files (set on its VirtualMachineSnapshotContent, read by restores, clones and images).
 */

/** On a VirtualMachineSnapshot: "true" to save the guest memory too, so a restore resumes it. */
export const WITH_MEMORY = 'snapshot.vessel.io/with-memory';
/** On a VirtualMachineSnapshot: "true" to have the guest agent trim the guest's free space first. */
export const SPARSIFY = 'snapshot.vessel.io/sparsify';
/** On a content: JSON {volumeName: snapshot file}. */
export const SNAPSHOT_FILES = 'vessel.io/snapshot-files';
/** On a content: the node whose pools hold its files. */
export const SNAPSHOT_NODE = 'vessel.io/node';
/** On a content: the guest memory file of a snapshot taken with memory. */
export const MEMORY_FILE = 'vessel.io/memory-file';
/** On a content: bytes the guest trimmed before the snapshot, when it was asked to and could. */
export const TRIMMED_BYTES = 'vessel.io/trimmed-bytes';
