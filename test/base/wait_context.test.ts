import { describe, expect, test } from "bun:test";
import { EventFd } from "../../src/base/event_fd.ts";
import { readFileSync } from "node:fs";
import { Timer } from "../../src/base/timer.ts";
import { pollSetting, WaitContext } from "../../src/base/wait_context.ts";

/** How often this thread has slept (voluntary context switches; a yield or a preemption is not one). */
const sleeps = (): number => Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(readFileSync("/proc/thread-self/status", "utf8"))![1]);

describe("WaitContext", () => {
  test("reports the token of each ready fd", () => {
    using ctx = new WaitContext<"a" | "b">();
    using a = new EventFd();
    using b = new EventFd();
    ctx.add(a.fd, "a");
    ctx.add(b.fd, "b");
    b.signal();
    expect(ctx.wait(1000).map((e) => e.token)).toEqual(["b"]);
    expect(b.read()).toBe(1);
  });

  test("times out with no events", () => {
    using ctx = new WaitContext<string>();
    using a = new EventFd();
    ctx.add(a.fd, "a");
    expect(ctx.wait(0)).toEqual([]);
  });

  test("delete stops reporting an fd", () => {
    using ctx = new WaitContext<string>();
    using a = new EventFd();
    ctx.add(a.fd, "a");
    ctx.delete(a.fd);
    a.signal();
    expect(ctx.wait(0)).toEqual([]);
  });
});

describe("WaitContext polling before it sleeps", () => {
  /** Arms `timer` `ms` ahead and waits for it; returns whether this thread slept meanwhile. */
  const waitFor = (ctx: WaitContext<string>, timer: Timer, ms: number): boolean => {
    timer.arm(ms);
    const before = sleeps();
    const events = ctx.wait(1000);
    const slept = sleeps() > before;
    expect(events.map((e) => e.token)).toEqual(["timer"]);
    timer.clear();
    return slept;
  };

  /** Waits for 1 ms timers until the window stops growing (it settles once polling finds them). */
  const settle = (ctx: WaitContext<string>, timer: Timer): void => {
    for (let i = 0, last = -1; i < 24 && ctx.pollWindowNs !== last; i++) {
      last = ctx.pollWindowNs;
      waitFor(ctx, timer, 1);
    }
  };

  /**
   * Runs a timing scenario up to three times until it holds: on a loaded machine a descheduled
   * test thread can make one attempt look like a long wait. An implementation that does not adapt
   * never passes.
   */
  const holdsOnce = (scenario: () => boolean): boolean => [0, 1, 2].some(() => scenario());

  test("events that keep coming close together are found by polling, without sleeping", () => {
    expect(holdsOnce(() => {
      using ctx = new WaitContext<string>({ pollNs: 50_000_000 }); // a ceiling far above the 1 ms timer
      using timer = new Timer();
      ctx.add(timer.fd, "timer");
      if (ctx.pollWindowNs !== 0) return false;
      settle(ctx, timer); // doubles from 4 µs while the timer comes after the window ends
      if (ctx.pollWindowNs < 1_000_000) return false;
      let asleep = 0;
      for (let i = 0; i < 5; i++) if (waitFor(ctx, timer, 1)) asleep++;
      return asleep <= 1; // one may still sleep if the thread is preempted at length
    })).toBe(true);
  });

  test("the window shrinks after a wait past the ceiling and stops after an idle one", () => {
    expect(holdsOnce(() => {
      using ctx = new WaitContext<string>({ pollNs: 2_000_000 });
      using timer = new Timer();
      ctx.add(timer.fd, "timer");
      settle(ctx, timer);
      const settled = ctx.pollWindowNs;
      if (settled < 1_000_000 || settled > 2_000_000) return false;
      waitFor(ctx, timer, 3); // past the ceiling (2 ms), within twice it: polls less
      if (ctx.pollWindowNs >= settled) return false;
      expect(ctx.wait(30)).toEqual([]); // nothing came: idle, so the next wait sleeps at once
      return ctx.pollWindowNs === 0;
    })).toBe(true);
  });

  test("a context without a ceiling never polls", () => {
    using ctx = new WaitContext<string>();
    using timer = new Timer();
    ctx.add(timer.fd, "timer");
    // A 5 ms timer has not fired by the time the wait starts, unless the thread was preempted that long.
    let asleep = 0;
    for (let i = 0; i < 3; i++) if (waitFor(ctx, timer, 5)) asleep++;
    expect(asleep).toBeGreaterThanOrEqual(2);
    expect(ctx.pollWindowNs).toBe(0);
  });

  test("the ceiling from the environment: whole ns, or the default", () => {
    expect(pollSetting(undefined, 64_000)).toBe(64_000);
    expect(pollSetting("0", 64_000)).toBe(0);
    expect(pollSetting("20000", 64_000)).toBe(20_000);
    for (const bad of ["", "-1", "1e6", "12.5", "lots", "99999999999"]) expect(pollSetting(bad, 64_000)).toBe(64_000);
    expect(pollSetting("9999999999", 64_000)).toBe(1_000_000_000);
  });

  test("waiting reuses its result: the array and records of one wait are those of the next", () => {
    using ctx = new WaitContext<string>();
    using a = new EventFd();
    ctx.add(a.fd, "a");
    a.signal();
    const first = ctx.wait(0);
    const record = first[0];
    const second = ctx.wait(0); // still readable: level-triggered
    expect(second).toBe(first);
    expect(second[0]).toBe(record!);
  });
});

describe("EventFd", () => {
  test("read returns the accumulated count and resets it", () => {
    using e = new EventFd();
    e.signal(2);
    e.signal(3);
    expect([e.read(), e.read()]).toEqual([5, 0]);
  });

  test("read returns counts above 2^32 exactly", () => {
    using e = new EventFd();
    e.signal(2 ** 33 + 7);
    expect(e.read()).toBe(2 ** 33 + 7);
  });
});
