/**
 * The clocks of a worker agent and of its worker's shard owner, and the margins between them.
 *
 * An agent that cannot complete a report cannot know whether Drover still counts its containers as
 * running. Two timeouts, as in Nomad's `max_client_disconnect`:
 *
 *   silence (owner's clock, since the agent's last report arrived)
 *   0 ── ttl ─────────────── lostAfter - margin ── lostAfter ── lostAfter + margin
 *        │                   │                     │            │
 *        │ worker            │ agent fences: stops │ its stops  │ owner declares the worker lost;
 *        │ unreachable,      │ its containers and  │ are done   │ its unknown containers end lost
 *        │ containers        │ starts nothing      │ (SIGKILL   │ (only now may anything of
 *        │ unknown           │                     │ at most    │ theirs be started elsewhere)
 *        │                   │                     │ margin/2   │
 *        │                   │                     │ after)     │
 *
 * The agent counts from when it *sent* its last answered report, the owner from when it *received*
 * it, so the agent's clock starts first; the margin covers clock-rate differences and scheduling
 * delays (each side measures only durations on its own monotonic clock, never compares wall times).
 */

/** The smallest margin: a stop needs time to reach the process group and SIGKILL to land. */
export const MIN_FENCE_MARGIN_MS = 1_000;

export interface AgentTiming {
  /** A worker whose agent has not reported for this long is unreachable. */
  readonly ttlMs: number;
  /** ... and lost after this long plus `marginMs` (on the owner's clock). */
  readonly lostAfterMs: number;
  readonly marginMs: number;
  /** The agent stops its containers when no report of its completed for this long. */
  readonly fenceAfterMs: number;
  /** The owner declares the worker lost after this long without a report. */
  readonly declareLostAfterMs: number;
}

export function agentTiming(ttlMs: number, lostAfterMs: number): AgentTiming {
  const marginMs = Math.max(MIN_FENCE_MARGIN_MS, Math.floor(lostAfterMs / 10));
  return { ttlMs, lostAfterMs, marginMs, fenceAfterMs: lostAfterMs - marginMs, declareLostAfterMs: lostAfterMs + marginMs };
}

/** How often an agent reports: three reports fit in one TTL. */
export function heartbeatMs(ttlMs: number): number {
  return Math.max(100, Math.floor(ttlMs / 3));
}
