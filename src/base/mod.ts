// mod.ts - host building blocks: errors, eventfd, epoll wait contexts.
export { checked, errnoName, SysError } from "./errno.ts";
export { EventFd } from "./event_fd.ts";
export { OwnedFd } from "./owned_fd.ts";
export { type SocketRead, StreamSocket } from "./stream_socket.ts";
export { Timer } from "./timer.ts";
export { type TriggeredEvent, WaitContext } from "./wait_context.ts";
