import { describe, expect, test } from "bun:test";
import { EventFd } from "../../src/base/event_fd.ts";
import { ControlLoop } from "../../src/vmm/control_loop.ts";

describe("ControlLoop", () => {
  test("a handler that turns the loop itself (as parking the vCPUs does) leaves the outer turn's events intact", () => {
    const loop = new ControlLoop();
    using a = new EventFd();
    using b = new EventFd();
    using c = new EventFd();
    const ran: string[] = [];
    loop.watch(a.fd, () => {
      ran.push("a");
      a.read();
      c.signal();
      loop.turn(0); // serves b and c now; the wait context reuses its event array for this
    });
    loop.watch(b.fd, () => {
      ran.push("b");
      b.read();
    });
    loop.watch(c.fd, () => {
      ran.push("c");
      c.read();
    });
    a.signal();
    b.signal();
    expect(loop.turn(0)).toBe(2);
    // The outer turn still runs what it saw (b, which has nothing left to read); c ran once, inside.
    expect(ran).toEqual(["a", "b", "c", "b"]);
    loop.close();
  });

  test("each turn runs the tasks added with everyTick", () => {
    const loop = new ControlLoop();
    let ticks = 0;
    loop.everyTick(() => ticks++);
    loop.turn(0);
    loop.turn(0);
    expect(ticks).toBe(2);
    loop.close();
  });
});
