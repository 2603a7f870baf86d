// stdout_probe.ts - run with stdout a pipe: opens tsvm's stdout output and reports on stderr what it got.
import { sys } from "../../ffi/mod.ts";
import { StreamOutput } from "../../src/base/stream_output.ts";

const F_GETFL = 3;
const out = StreamOutput.openStdout();
out.write(new TextEncoder().encode("through the reopened stdout\n"));
const report = { fd: out.fd, stdout: out.stdout, fd1Flags: sys.fcntlIntRaw(1, F_GETFL, 0), ownFlags: sys.fcntlIntRaw(out.fd, F_GETFL, 0) };
process.stderr.write(JSON.stringify(report));
