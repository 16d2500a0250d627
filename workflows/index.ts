/** Every workflow the worker registers. */
export { snapshotWorkflow } from './snapshot-workflow.js';
export { storageGcWorkflow } from './storage-gc-workflow.js';
export { backupScrubWorkflow } from './backup-scrub-workflow.js';
export { vmStepWorkflow } from './vm-step-workflow.js';
