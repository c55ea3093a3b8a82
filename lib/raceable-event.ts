/**
 * A one-time event (a connection lost, a Ctrl-C) that many short waits,
 * one after another, race against.
 *
 * Owns: racing work against the event without the leak of
 * `Promise.race([event, work])`. Each such race adds a reaction to the
 * event's promise that lives as long as that promise does, and the reaction
 * keeps the race's result alive: `txkv cli` reading a script while connected
 * kept every line it read (about 20 MB/s under `yes PING`). Here the event's
 * promise has one reaction, which wakes whichever waits are pending.
 * Must not: know what the event or the work is.
 */
export class RaceableEvent<E> {
  private happened = false;
  private value: E | undefined;
  private readonly waiting = new Set<(value: E) => void>();

  /** `event` must not reject: an event that fails is one that happens. */
  constructor(event: Promise<E>) {
    void event.then((value) => {
      this.happened = true;
      this.value = value;
      for (const wake of this.waiting) wake(value);
      this.waiting.clear();
    });
  }

  /** Settles as `work` does, or with the event's value if the event came first. */
  race<T>(work: Promise<T>): Promise<T | E> {
    if (this.happened) {
      work.catch(() => {}); // it lost the race: a later failure of it is nobody's to handle
      return Promise.resolve(this.value as E);
    }
    return new Promise<T | E>((resolve, reject) => {
      this.waiting.add(resolve);
      work.then(
        (result) => {
          this.waiting.delete(resolve);
          resolve(result);
        },
        (error: unknown) => {
          this.waiting.delete(resolve);
          reject(error);
        },
      );
    });
  }
}
