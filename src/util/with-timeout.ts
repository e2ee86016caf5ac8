/**
 * A promise that settles as `promise` does, or rejects with `message` after `ms`, whichever comes
 * first; the timer is cleared either way (no timer outlives the race). The original promise is
 * not cancelled: a late settlement is ignored.
 */
export function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}
