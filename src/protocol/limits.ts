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
