// hostile_backend.ts - a vhost-user back-end that misbehaves on purpose, for the front-end's tests.
//   bun test/support/hostile_backend.ts SOCKET MODE
// MODE: silent (never answers), wrong-reply (answers another request), close (hangs up after the
// first request), half-reply (sends half an answer, then nothing), huge-reply (claims a 1 MiB
// payload), flood (answers the handshake, then floods the back-end channel with config changes).
// It prints "listening" once the socket exists and serves one front-end.
import { socket, sys } from "../../ffi/mod.ts";
import { ByteWriter } from "../../src/base/codec.ts";
import { VhostUserConnection } from "../../src/devices/vhost_user/connection.ts";
import {
  encodeU64, VHOST_USER, VHOST_USER_BACKEND, VHOST_USER_F_PROTOCOL_FEATURES, VHOST_USER_FLAG_REPLY, VHOST_USER_PROTOCOL_F,
} from "../../src/devices/vhost_user/protocol.ts";

const [path, mode] = Bun.argv.slice(2);
const listener = socket.unixListen(path!, socket.SOCK_STREAM);
if (listener < 0) process.exit(2);
console.log("listening");
socket.waitReadable(listener, -1);
const connection = new VhostUserConnection(socket.accept(listener));
const VERSION_1 = 1n << 32n;
const PROTOCOL = (1n << VHOST_USER_PROTOCOL_F.BACKEND_REQ) | (1n << VHOST_USER_PROTOCOL_F.REPLY_ACK);
let channel: VhostUserConnection | null = null;

for (;;) {
  const m = connection.receive(60_000);
  if (!m.ok) process.exit(0);
  const { request, flags } = m.value;
  switch (mode) {
    case "silent":
      break;
    case "wrong-reply":
      connection.send(VHOST_USER.GET_QUEUE_NUM, VHOST_USER_FLAG_REPLY, encodeU64(1));
      break;
    case "close":
      process.exit(0);
      break;
    case "half-reply":
      sys.writeRaw(connection.fd, new ByteWriter().u32(request).u32(VHOST_USER_FLAG_REPLY | 1).done());
      break;
    case "huge-reply":
      sys.writeRaw(connection.fd, new ByteWriter().u32(request).u32(VHOST_USER_FLAG_REPLY | 1).u32(1 << 20).done());
      break;
    case "flood": {
      // A plausible handshake, then a flood of configuration-change notices.
      if (request === VHOST_USER.GET_FEATURES) connection.send(request, VHOST_USER_FLAG_REPLY, encodeU64(VERSION_1 | (1n << VHOST_USER_F_PROTOCOL_FEATURES)));
      else if (request === VHOST_USER.GET_PROTOCOL_FEATURES) connection.send(request, VHOST_USER_FLAG_REPLY, encodeU64(PROTOCOL));
      else if (flags & (1 << 3)) connection.send(request, VHOST_USER_FLAG_REPLY, encodeU64(0));
      if (request === VHOST_USER.SET_BACKEND_REQ_FD) {
        channel = new VhostUserConnection(m.value.fds[0]!);
        for (let i = 0; i < 5000; i++) channel.send(VHOST_USER_BACKEND.CONFIG_CHANGE_MSG, 0, new Uint8Array(0), [], 1000);
      }
      break;
    }
    default:
      process.exit(3);
  }
}
