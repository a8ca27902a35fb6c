"""A small authoritative DNS server (dnspython, UDP and TCP) answering TXT
queries from a JSON map {name: record text}; everything else NXDOMAIN.

Used by tests/verifiers/verify.py inside a network namespace, where the libc
resolver of OpenDKIM (and Perl's Net::DNS) finds it at 127.0.0.1:53."""
import json
import socket
import socketserver
import sys
import threading

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def answer(wire, records):
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    q = query.question[0]
    name = q.name.to_text(omit_final_dot=True).lower()
    text = records.get(name)
    if text is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif q.rdtype == dns.rdatatype.TXT:
        chunks = [text[i:i + 255] for i in range(0, len(text), 255)]
        rdata = " ".join('"%s"' % c for c in chunks)
        response.answer.append(dns.rrset.from_text(q.name, 60, "IN", "TXT", rdata))
    return response.to_wire()


def serve(records, host="127.0.0.1", port=53):
    class Udp(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(answer(data, records), self.client_address)

    class Tcp(socketserver.BaseRequestHandler):
        def handle(self):
            size = int.from_bytes(self.request.recv(2), "big")
            data = b""
            while len(data) < size:
                data += self.request.recv(size - len(data))
            wire = answer(data, records)
            self.request.sendall(len(wire).to_bytes(2, "big") + wire)

    socketserver.UDPServer.allow_reuse_address = True
    socketserver.TCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer((host, port), Udp)
    tcp = socketserver.ThreadingTCPServer((host, port), Tcp)
    for s in (udp, tcp):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    return udp, tcp


if __name__ == "__main__":
    import dns.flags  # noqa: F401
    serve(json.load(open(sys.argv[1])))
    threading.Event().wait()
