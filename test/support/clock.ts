/**
 * A clock for a test fleet that runs `offset` ahead of real time, so tests step past expiry and
 * overlaps instead of waiting for them. withClock sets the offset for one step and always puts it back.
 */
export function offsetClock() {
  let offset = 0;
  return {
    clock: () => new Date(Date.now() + offset),
    async withClock<T>(ms: number, fn: () => Promise<T>): Promise<T> {
      offset = ms;
      try {
        return await fn();
      } finally {
        offset = 0;
      }
    },
  };
}
