/** The stable error codes of the public contract, and the error type that carries them. */
export const ERROR_CODES = [
  'INVALID_REQUEST',
  'NOT_FOUND',
  'ALREADY_PLACED',
  'NO_CAPACITY',
  'UNAVAILABLE',
  'CONFLICT',
  /** The backlog holds its maximum of queued requests (DROVER_BACKLOG_MAX). */
  'BACKLOG_FULL',
  /** A worker agent's report while another live agent (another incarnation) runs the worker. */
  'AGENT_CONFLICT',
  /**
   * The request's Drover-Deadline had passed when a router took it (or before it could be placed
   * or queued): nothing was started; the reply carries the deadline and the replica's clock.
   */
  'DEADLINE_EXCEEDED',
  'INTERNAL',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export class DroverError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'DroverError';
  }
}

export interface ErrorReply {
  readonly ok: false;
  readonly error: { readonly code: ErrorCode; readonly message: string };
  readonly [detail: string]: unknown;
}

export function errorReply(code: ErrorCode, message: string, details: Record<string, unknown> = {}): ErrorReply {
  return { ok: false, error: { code, message }, ...details };
}

export function replyFromError(error: unknown): ErrorReply {
  if (error instanceof DroverError) return errorReply(error.code, error.message, error.details);
  return errorReply('INTERNAL', 'internal error; see the replica log');
}
