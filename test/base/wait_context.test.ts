import { describe, expect, test } from "bun:test";
import { EventFd } from "../../src/base/event_fd.ts";
import { WaitContext } from "../../src/base/wait_context.ts";

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

describe("EventFd", () => {
  test("read returns the accumulated count and resets it", () => {
    using e = new EventFd();
    e.signal(2);
    e.signal(3);
    expect([e.read(), e.read()]).toEqual([5, 0]);
  });
});
