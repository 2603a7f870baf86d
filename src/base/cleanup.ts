// cleanup.ts - undoing what a run set up, last first, where one failing step must not stop the rest.
import { log } from "./log.ts";
import { describeError } from "./result.ts";

/** Runs and empties `steps` from the last to the first; a step that throws is logged and skipped. */
export function runCleanup(steps: (() => void)[]): void {
  while (steps.length > 0) {
    try {
      steps.pop()!();
    } catch (e) {
      log.warn(`while shutting down: ${describeError(e)}`);
    }
  }
}
