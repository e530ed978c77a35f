import { useEffect, useRef, useState, type Inputs } from "preact/hooks";

/** Polling while carves on the page are arriving, and otherwise (new carves appear at the top of the list). */
export const POLL_RECEIVING_MS = 2000;
export const POLL_IDLE_MS = 10_000;

/**
 * Runs `load` now and again after the delay it returns (null: not again), until the inputs change or the
 * component goes. Never two at once; paused while the tab is hidden (every poll is an audited API request);
 * the returned function runs it again at once (after an action).
 */
export function usePoll(load: (signal: AbortSignal) => Promise<number | null>, inputs: Inputs): () => void {
  const again = useRef<() => void>(() => undefined);
  useEffect(() => {
    const abort = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    let running = false;
    let wanted = false;
    let delay: number | null = null;
    const run = async (): Promise<void> => {
      clearTimeout(timer);
      if (running) {
        wanted = true;
        return;
      }
      running = true;
      try {
        delay = await load(abort.signal);
      } catch {
        delay = null; // load reports its own errors; a failed poll is tried again only when asked
      }
      running = false;
      if (abort.signal.aborted) return;
      if (wanted) {
        wanted = false;
        void run();
      } else schedule();
    };
    const schedule = (): void => {
      if (delay !== null && !document.hidden) timer = setTimeout(() => void run(), delay);
    };
    const visibility = (): void => {
      if (!document.hidden && delay !== null) void run();
    };
    again.current = () => void run();
    document.addEventListener("visibilitychange", visibility);
    void run();
    return () => {
      abort.abort();
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", visibility);
    };
  }, inputs);
  return () => again.current();
}

/** The current time, updated every `ms`: "last block 12 s ago" keeps counting between polls. */
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}
