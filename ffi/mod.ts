// mod.ts - the typed bindings of libtsvm.so, one namespace per C file.
export * as aio from "./aio.ts";
export * as event from "./event.ts";
export * as jail from "./jail.ts";
export * as socket from "./socket.ts";
export * as sys from "./sys.ts";
export * as term from "./term.ts";
export * as vcpu from "./vcpu.ts";
