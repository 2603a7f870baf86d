// The hand-off of a checked `tsvm run` configuration to the program that runs the VM: the state
// survives encoding whole, and anything tsvm did not make is refused with a reason.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { sys } from "../../ffi/mod.ts";
import { RUN_STATE_ENV } from "../../src/base/in_process_jsc.ts";
import { parseRunConfig } from "../../src/config.ts";
import { parseDevicesConfig } from "../../src/devices_config.ts";
import { decodeRunState, encodeRunState, takeHandOff } from "../../src/vmm/hand_off.ts";
import { tsvmCommand } from "../support/tsvm.ts";

const config = parseRunConfig({
  mem: "512", cpus: "2", params: ["console=ttyS0"], block: ["path=/tmp/a.img,ro=true"], net: ["tap-fd=9,mac=52:54:00:12:34:56"],
  vhostUser: ["fs,socket=/tmp/fs.sock,tag=share"], vsock: "cid=3,uds=/tmp/v.sock", socket: "/tmp/c.sock",
});
const filters = new Map([["block", Uint8Array.of(1, 2, 3, 0, 255)], ["rng", new Uint8Array(0)]]);
const devicesConfig = parseDevicesConfig({ block: ["vhost=/tmp/b.sock,path=/tmp/a.img"], net: ["vhost=/tmp/n.sock,tap-fd=9"], rng: ["vhost=/tmp/r.sock"] });

/** A memfd holding `bytes`, sealed as handOff seals it when `seal`. */
function memfdWith(bytes: Uint8Array, seal: boolean): number {
  const fd = sys.memfdCreate("test_run_state", 2 /* MFD_ALLOW_SEALING */);
  expect(sys.writeRaw(fd, bytes)).toBe(bytes.byteLength);
  if (seal) expect(sys.fcntlIntRaw(fd, 1033 /* F_ADD_SEALS */, 15)).toBe(0);
  return fd;
}

describe("run state hand-off", () => {
  test("a configuration and its filters come back whole, byte arrays included", () => {
    const back = decodeRunState(encodeRunState({ command: "run", config, filters }));
    if (typeof back === "string" || back.command !== "run") throw new Error(String(back));
    expect(back.config).toEqual(config);
    expect(back.config.vhostUser[0]!.localConfig).toBeInstanceOf(Uint8Array);
    expect([...back.filters]).toEqual([...filters]);
    const devices = decodeRunState(encodeRunState({ command: "devices", config: devicesConfig, filters }));
    if (typeof devices === "string" || devices.command !== "devices") throw new Error(String(devices));
    expect(devices.config).toEqual(devicesConfig);
  });

  test("what tsvm did not make is refused with a reason", () => {
    const text = (s: string): Uint8Array => new TextEncoder().encode(s);
    expect(decodeRunState(text("{"))).toBe("not JSON");
    expect(decodeRunState(Uint8Array.of(0xff, 0xfe))).toBe("not JSON");
    expect(decodeRunState(text("null"))).toBe("not an object");
    expect(decodeRunState(text('{"version":"0.0.0-other","config":{},"filters":[]}'))).toMatch(/^made by another tsvm version/);
    const good = JSON.parse(new TextDecoder().decode(encodeRunState({ command: "run", config, filters })));
    expect(decodeRunState(text(JSON.stringify({ ...good, command: "stop" })))).toBe('no command tsvm hands off ("stop")');
    expect(decodeRunState(text(JSON.stringify({ ...good, config: null })))).toBe("no configuration");
    expect(decodeRunState(text(JSON.stringify({ ...good, filters: [["block", [1, 2]]] })))).toBe("malformed filters");
  });

  test("the state is taken from a sealed memfd once, and the variable leaves the environment", () => {
    const fd = memfdWith(encodeRunState({ command: "run", config, filters }), true);
    process.env[RUN_STATE_ENV] = String(fd);
    const state = takeHandOff("run");
    if (typeof state === "string") throw new Error(state);
    expect(state.config).toEqual(config);
    expect(process.env[RUN_STATE_ENV]).toBeUndefined();
    expect(sys.fcntlIntRaw(fd, 1 /* F_GETFD */, 0)).toBeLessThan(0); // closed

    const unsealed = memfdWith(encodeRunState({ command: "run", config, filters }), false);
    process.env[RUN_STATE_ENV] = String(unsealed);
    expect(takeHandOff("run")).toBe(`fd ${unsealed} is not a sealed run state`);
    process.env[RUN_STATE_ENV] = "../etc/passwd";
    expect(takeHandOff("run")).toBe(`${RUN_STATE_ENV}="../etc/passwd" is not an fd number`);
    // A state for one command is not taken by the other.
    process.env[RUN_STATE_ENV] = String(memfdWith(encodeRunState({ command: "devices", config: devicesConfig, filters }), true));
    expect(takeHandOff("run")).toBe("a state for tsvm devices, not tsvm run");
  });

  for (const command of ["run", "devices"]) {
    test(`tsvm ${command} with a hand-off it did not make exits 2 and says why`, async () => {
      // The executable's entry point (src/tsvm.ts) is the program that takes hand-offs.
      const tsvm = process.env.TSVM_BIN ? tsvmCommand() : [process.execPath, join(import.meta.dir, "../../src/tsvm.ts")];
      const child = Bun.spawn([...tsvm, command], { env: { ...process.env, [RUN_STATE_ENV]: "1" }, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
      const stderr = await new Response(child.stderr).text();
      expect(stderr).toContain(`${RUN_STATE_ENV}: fd 1 is not a sealed run state`);
      expect(await child.exited).toBe(2);
    }, 30_000);
  }
});
