// in_process_jsc.ts - the JSC settings of the VMM and of device code (exec_self.ts puts them in
// place: JSC reads them only from the environment, at start), and the names of the environment
// variables tsvm passes to itself. It imports nothing at run time (types only): ffi/lib.ts and
// src/tsvm.ts read it before anything else is loaded.
import type { DeviceKind } from "../devices/device_spec.ts";

/**
 * Device processes, and a VMM that restarts with VMM_JSC (a hand-off, --disable-sandbox, `tsvm
 * devices`), collect their garbage once a GC cycle has allocated GC_CYCLE_BYTES (JSC's
 * `gcMaxHeapSize`, which despite its name caps the bytes allocated between collections, not the
 * heap). JSC otherwise sizes a cycle in proportion to the heap it believes it has, and it counts
 * every ArrayBuffer's bytes in that heap, the views over guest memory too: with 256 MiB of guest RAM
 * mapped, a block device serving 19,200 64 KiB reads never collected (~24 MiB of garbage, every
 * page of it a fresh page fault), a probe kept ~300 MiB uncollected, and the device process grew from 50 to 120 MiB over
 * 96,000 requests with 1 GiB of guest RAM; to 138 MiB over 480,000 with 2 GiB, 46 MiB with the cap).
 * A cycle of 4 MiB costs an eden collection of ~0.4 ms every ~3,000 such requests.
 * test/base/in_process_jsc.test.ts shows both. A VMM that runs in place (src/main.ts) cannot take
 * it (JSC reads it only at start) and does not need it as much: its exit path allocates little (a
 * million MMIO exits peaked at 51 MiB RSS with the cap and without).
 */
export const GC_CYCLE_BYTES = 4 * 1024 * 1024;
const GC_CYCLE = { BUN_JSC_gcMaxHeapSize: String(GC_CYCLE_BYTES) };

/**
 * The JSC settings of a device process (jailed_process.ts says why): no FTL, JSC's top JIT tier,
 * one GC marker, collections every GC_CYCLE_BYTES, and no thread that keeps heap blocks warm.
 * JSC's `useWarmUpMarkedBlocks` starts a thread (JSCWarmUp) that prepares 32 heap blocks ahead of
 * the allocator and wakes every few milliseconds: in a block process serving 64 KiB writes at depth
 * 32 it ran ~44 ms of every second, 373 wake-ups, on the CPUs the device's loop and the vCPU need
 * (the loop was preempted 442 times a second with it, 161 without), and the blocks it keeps are
 * memory: without it bench section 5's device processes held 3.0-3.4 MiB each against 3.4-3.9,
 * the tree 21.0-21.4 MiB against 23.0, an extra disk 3.2-3.3 against 3.7. Not in VMM_JSC: `tsvm devices`
 * without it held 5.8 MiB against 4.7 (its device processes 3.1 and 2.9 MiB either way, 3.4 each
 * with the thread).
 */
export const DEVICE_JSC: Readonly<Record<string, string>> = {
  BUN_JSC_useFTLJIT: "0", BUN_JSC_numberOfGCMarkers: "1", BUN_JSC_useWarmUpMarkedBlocks: "0", ...GC_CYCLE,
};

/**
 * What a device process of its own adds: JSC's baseline JIT only after 40 times its usual warm-up
 * (JSC's default is 500). A device's work comes in bursts; a short one ran its paths a few dozen
 * times, and compiling them in its middle, on the CPU the device shares with the program it serves,
 * cost more than the interpreter does, and kept the code. A long stream still gets the JIT after
 * about a thousand packets or requests. Block at steady state measured the same (4 KiB reads at
 * depth 1 and 32, 64 KiB at depth 32), and its process 0.3-0.5 MiB smaller after boot. Not for the
 * VMM under --disable-sandbox: its exit handlers run hot from the first instructions of a boot.
 */
export const DEVICE_PROCESS_JSC: Readonly<Record<string, string>> = { BUN_JSC_thresholdForJITAfterWarmUp: "20000" };

/**
 * And for devices whose work is only ever bursts (vsock, rng, balloon, console): no DFG, JSC's
 * optimizing tier. The test guest's 1 MiB vsock transfer, 5 runs each, host→guest: 2.8-4.4 ms with
 * every tier, 2.8-3.4 without DFG, 2.0-2.5 without DFG and with the late baseline JIT; the device's
 * CPU time over both directions 3.6-6.2, 2.8-5.1 and 1.3-2.1 ms, and ~1 MiB less memory after it.
 * Steady state, a packet then costs the device ~0.8 µs more than with DFG. Block and net keep DFG:
 * without it 4 KiB reads at depth 32 cost twice the cycles.
 */
export const BURST_DEVICE_JSC: Readonly<Record<string, string>> = { BUN_JSC_useDFGJIT: "0" };
export const BURST_DEVICE_KINDS: ReadonlySet<DeviceKind> = new Set<DeviceKind>(["vsock", "rng", "balloon", "console"]);

/**
 * The VMM's own (`tsvm run`, `tsvm devices`): JSC's baseline JIT only after 40 times its usual
 * warm-up, as in device processes. A VMM runs much of its code a few hundred times and never again
 * (the command line, the loaders, the firmware tables, the devices' set-up); compiled, it stayed in
 * memory for the VM's life. The exit handlers run tens of thousands of times in a boot and still
 * reach the JIT early. Measured: the VMM 16.9 MiB after boot against 19.9-21.3, the first serial
 * byte 4-5 ms sooner (40 ms against 44-45, median of 15, the settings preset), the exit round trip
 * the same (1.04×-1.05× the C loop). And no FTL, as the exit server's handlers already had none:
 * the exit round trip measured the same without it (1.05× / 1.04×), the VMM 0.3-0.5 MiB smaller,
 * and its compiles no longer land on CPUs the vCPUs keep busy. And collections every GC_CYCLE_BYTES.
 */
export const VMM_JSC: Readonly<Record<string, string>> = { BUN_JSC_thresholdForJITAfterWarmUp: "20000", BUN_JSC_useFTLJIT: "0", ...GC_CYCLE };

/**
 * The JIT policy a VMM that did not restart takes at run time (Bun.unsafe.setJITPolicy scales every
 * tier-up threshold): the same 40-fold warm-up. It cannot turn FTL off, which only VMM_JSC does.
 */
export const VMM_JIT_POLICY = 40;

/** Where ffi/lib.ts names the memfd that holds the library (a device process gets it as an fd: DEVICE_LIBRARY_FD_ENV). */
export const LIBRARY_ENV = "TSVM_LIBRARY_FD_PATH";
/**
 * The fd number at which a jailed device process finds the VMM's sealed, read-only memfd of the
 * library (set only by the VMM that spawned it; ffi/lib.ts opens it and closes the fd).
 */
export const DEVICE_LIBRARY_FD_ENV = "TSVM_LIBRARY_FD";
/** Names the fd of the state `tsvm run` or `tsvm devices` hands to the program it execs (vmm/hand_off.ts). */
export const RUN_STATE_ENV = "TSVM_RUN_STATE_FD";
