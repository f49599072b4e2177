# Regenerates the vector of keys.rs `legacy_prf_reproduces_stock_server_keys`.
#
# A minimal OpenVPN 2.x UDP client (no tls-crypt, loopback only) whose peer info lacks IV_PROTO
# bit 3, so a stock `openvpn` 2.6 server derives the data keys with the legacy TLS 1.0 PRF
# (docs/openvpn-protocol.md section 6.3). It prints the key-method-2 inputs as JSON; the server,
# run at `verb 9`, logs "Client pre_master/random1/random2", "Server random1/random2",
# "Outgoing/Incoming Data Channel: CIPHER KEY" and "ENCRYPT IV".
#
# Usage: PKI=/dir/with/ca.crt,client.crt,client.key python3 legacy_prf_client.py [wait-seconds]
# against a server with: port 21950, local 127.0.0.1, proto udp, dev tun, topology subnet,
# server 10.98.0.0 255.255.255.0, keepalive 10 60, ca/cert/key, dh none, verb 9.
# Wait ~12 s so the server sends a keepalive and logs its ENCRYPT IV.
import socket, ssl, os, struct, json, time, sys
SRV = ("127.0.0.1", 21950)
PKI = os.environ.get("PKI", ".")
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.settimeout(0.2)
sidc = os.urandom(8); sids = None
send_pid = 0; recv_expected = 0; pending = {}
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False
ctx.load_verify_locations(f"{PKI}/ca.crt"); ctx.load_cert_chain(f"{PKI}/client.crt", f"{PKI}/client.key")
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_side=False)
def send_ctrl(op, payload=b""):
    global send_pid
    sock.sendto(bytes([op << 3]) + sidc + b"\x00" + struct.pack(">I", send_pid) + payload, SRV); send_pid += 1
def send_ack(pid):
    sock.sendto(bytes([5 << 3]) + sidc + b"\x01" + struct.pack(">I", pid) + sids, SRV)
def flush():
    data = out.read()
    for i in range(0, len(data), 1000): send_ctrl(4, data[i:i+1000])
def pump(t=0.3):
    global sids, recv_expected
    end = time.time() + t
    while time.time() < end:
        try: b, _ = sock.recvfrom(4096)
        except socket.timeout: continue
        op = b[0] >> 3
        if op in (6, 9): continue
        if sids is None: sids = b[1:9]
        n = b[9]; p = 10 + 4 * n + (8 if n else 0)
        if op == 5: continue
        pid = struct.unpack(">I", b[p:p+4])[0]; payload = b[p+4:]
        send_ack(pid)
        if pid >= recv_expected: pending[pid] = payload
        while recv_expected in pending:
            inc.write(pending.pop(recv_expected)); recv_expected += 1
def wstr(s):
    s = s.encode()
    return struct.pack(">H", len(s) + 1) + s + b"\x00" if s else b"\x00\x00"
send_ctrl(7); pump(0.5)
while True:
    try: tls.do_handshake(); break
    except ssl.SSLWantReadError: flush(); pump(0.2)
flush()
pre_master, r1, r2 = os.urandom(48), os.urandom(32), os.urandom(32)
opts = "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client"
peer = "IV_VER=2.4.12\nIV_PLAT=linux\nIV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM\nIV_PROTO=2\n"
tls.write(b"\x00\x00\x00\x00\x02" + pre_master + r1 + r2 + wstr(opts) + wstr("") + wstr("") + wstr(peer)); flush()
buf = b""
for _ in range(50):
    pump(0.2)
    try: buf += tls.read(4096)
    except ssl.SSLWantReadError: pass
    flush()
    if len(buf) > 75: break
assert buf[4] == 2, buf[:8]
sr1, sr2 = buf[5:37], buf[37:69]
tls.write(b"PUSH_REQUEST\x00"); flush()
push = b""
for _ in range(50):
    pump(0.2)
    try: push += tls.read(4096)
    except ssl.SSLWantReadError: pass
    flush()
    if b"PUSH_REPLY" in push: break
pump(float(sys.argv[1]) if len(sys.argv) > 1 else 0.5)  # wait for the server's keepalive ping
print(json.dumps({"client_sid": sidc.hex(), "server_sid": sids.hex(), "pre_master": pre_master.hex(),
    "client_random1": r1.hex(), "client_random2": r2.hex(), "server_random1": sr1.hex(), "server_random2": sr2.hex(),
    "push_reply": push.split(b"\x00")[0].decode(errors="replace"), "tls": tls.version()}, indent=1))
