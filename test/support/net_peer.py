#!/usr/bin/env python3
"""net_peer.py IFACE [SECONDS] - the host side of the virtio-net test: waits on IFACE (an AF_PACKET
socket) for the guest's frame of ethertype 0x88b5, prints its payload, and answers the guest's MAC with
a frame of the same ethertype. Exits 1 if nothing arrives within SECONDS (default 30)."""
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
ETHERTYPE = 0x88B5

iface = sys.argv[1]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
s.bind((iface, 0))
s.settimeout(1.0)
print("ready", flush=True)
deadline = time.time() + (float(sys.argv[2]) if len(sys.argv) > 2 else 30)
while time.time() < deadline:
    try:
        frame = s.recv(65536)
    except socket.timeout:
        continue
    if len(frame) < 14 or struct.unpack("!H", frame[12:14])[0] != ETHERTYPE:
        continue
    guest_mac = frame[6:12]
    payload = frame[14:].split(b"\0")[0].decode()
    print(f"from guest: {payload}", flush=True)
    my_mac = bytes.fromhex("020000aabbcc")
    reply = guest_mac + my_mac + struct.pack("!H", ETHERTYPE) + b"hello from the host side\0"
    s.send(reply.ljust(60, b"\0"))
    sys.exit(0)
print("no frame from the guest", flush=True)
sys.exit(1)
