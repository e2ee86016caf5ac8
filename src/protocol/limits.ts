/**
 * Every bound on what crosses the public boundary, in one place (TIGER_STYLE: a limit on
 * everything). Ids end up inside NATS subjects and Redis keys, so their alphabet has no dot,
 * `*`, `>`, `{`, `}` or whitespace.
 */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;
/** GPU types and pool names: same alphabet, shorter. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
/** Largest request or reply body on a public subject. */
export const MAX_PAYLOAD_BYTES = 64 * 1024;
/** Largest worker: 4,096 cores, 64 TiB, 64 GPUs. Anything bigger is a typo or an attack. */
export const MAX_WORKER_CPU = 4_096_000;
export const MAX_WORKER_MEMORY = 64 * 1024 * 1024;
export const MAX_GPU_COUNT = 64;
/** Largest container: no bigger than the largest worker. */
export const MAX_CONTAINER_CPU = MAX_WORKER_CPU;
export const MAX_CONTAINER_MEMORY = MAX_WORKER_MEMORY;
/** Containers in one drover.submit.batch request. */
export const MAX_BATCH_SUBMIT = 500;
/** Workers in one page of drover.workers.list. */
export const MAX_LIST_PAGE = 500;
/** A queued request's priority: higher is placed first. */
export const MIN_PRIORITY = -1_000_000;
export const MAX_PRIORITY = 1_000_000;
/** How long a request may wait in the backlog: 1 hour unless it says otherwise, 24 hours at most. */
export const DEFAULT_MAX_WAIT_MS = 3_600_000;
export const MAX_MAX_WAIT_MS = 86_400_000;
/** A container's command (argv) and environment, as given to the worker agent that runs it. */
export const MAX_COMMAND_ARGS = 64;
export const MAX_ENV_ENTRIES = 64;
export const MAX_ARG_LENGTH = 4_096;
/** Command and environment together, as stored with the container (JSON, bytes). */
export const MAX_SPEC_BYTES = 16 * 1024;
export const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
