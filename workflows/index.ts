/** Every workflow the worker registers. */
export { snapshotWorkflow } from './snapshot-workflow.js';
