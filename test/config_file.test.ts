import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { MAX_CONFIG_FILE, mergeRunOptions, readConfigFile } from "../src/config_file.ts";
import { parseRunConfig } from "../src/config.ts";
import { tempDir } from "./support/tsvm.ts";

const MIB = 1024 * 1024;

function file(content: unknown): string {
  const path = join(tempDir(), "vm.json");
  writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
  return path;
}

describe("config files", () => {
  test("hold the run options by their long names", () => {
    const raw = readConfigFile(file({ mem: "512M", cpus: 2, params: ["quiet"], rng: false, "log-level": "info", block: ["path=/tmp/x.img,ro=true"] }));
    const config = parseRunConfig(raw);
    expect([config.memorySize, config.cpus, config.params, config.rng, config.logLevel, config.blocks[0]!.ro]).toEqual([512 * MIB, 2, ["quiet"], false, "info", true]);
  });

  test("flags given on the command line override the file, lists included", () => {
    const merged = mergeRunOptions(readConfigFile(file({ mem: "512M", params: ["a"] })), { mem: "1G", params: ["b"], cpus: undefined });
    expect(parseRunConfig(merged)).toMatchObject({ memorySize: 1024 * MIB, params: ["b"] });
  });

  test("an unknown key is named with the keys that are accepted", () => {
    expect(() => readConfigFile(file({ memory: "1G" }))).toThrow(/memory: unknown key \(accepted: kernel, initrd, mem,/);
  });

  test("a value of the wrong type names its JSON path", () => {
    expect(() => readConfigFile(file({ block: ["path=a", 7] }))).toThrow(/block\.1: expected a string/);
  });

  test("malformed JSON and missing files are reported as such", () => {
    expect(() => readConfigFile(file("{mem: 1"))).toThrow(/not valid JSON/);
    expect(() => readConfigFile("/nonexistent/vm.json")).toThrow(/cannot read it \(ENOENT\)/);
  });

  test("only a regular file of at most MAX_CONFIG_FILE bytes is read: a FIFO, a device or a huge file is refused at once", () => {
    const fifo = join(tempDir(), "vm.json");
    Bun.spawnSync(["mkfifo", fifo]);
    expect(() => readConfigFile(fifo)).toThrow(/--config .*vm\.json: cannot read it \(not a regular file\)/);
    expect(() => readConfigFile("/dev/zero")).toThrow(/cannot read it \(not a regular file\)/);
    const big = file(`{"mem": "1G"}${" ".repeat(MAX_CONFIG_FILE)}`);
    expect(() => readConfigFile(big)).toThrow(new RegExp(`cannot read it \\(${MAX_CONFIG_FILE + 13} bytes is more than ${MAX_CONFIG_FILE}\\)`));
    expect(readConfigFile(file(`{"mem": "1G"}${" ".repeat(MAX_CONFIG_FILE - 13)}`)).mem).toBe("1G");
  });

  test("values are validated like flags", () => {
    expect(() => parseRunConfig(readConfigFile(file({ mem: "0" })))).toThrow(/--mem: must be at least 16 MiB/);
  });
});
