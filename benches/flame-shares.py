#!/usr/bin/env python3
"""Where a profile's samples go, by part of ringpost's data path.

    benches/flame-shares.py FOLDED

FOLDED is `perf script | inferno-collapse-perf --all` output (one line per
stack: frames separated by ';', kernel frames marked `_[k]`, then the
sample weight: with `-e cpu-clock` perf gives each sample its period, so
the weights are nanoseconds of CPU). Each sample goes to the innermost frame that names a part
below (so sled called by the spool counts as sled, the spool's own code as
the spool); a stack naming none is the runtime's (glommio, io_uring,
threads). The kernel column is the share of the part's samples whose leaf
frame is in the kernel (system calls, the network stack, page faults).
"""

import sys
from collections import defaultdict

# (part, prefixes of frame names), innermost match wins; order breaks ties
# between prefixes of the same frame.
PARTS = [
    ("allocator (jemalloc)", ("_rjem_", "je_", "tikv_jemalloc")),
    ("sled (envelope records)", ("sled::",)),
    ("TLS (rustls, ring)", ("rustls::", "ring::")),
    ("DKIM", ("mail_auth::", "ringpost::dkim::")),
    ("metrics", ("metrics::", "metrics_util::", "metrics_exporter", "ringpost::metrics")),
    ("events, webhooks", ("ringpost::events::",)),
    ("SMTP reception (session, parsing)", ("ringpost::inbound::smtp::", "ringpost::proto::")),
    ("reception door (headers, checks, enqueue)", ("ringpost::inbound::",)),
    ("spool: journal, commit, bodies", ("ringpost::queue::",)),
    ("scheduler (rounds, gates, records)", ("ringpost::scheduler::",)),
    ("delivery client (SMTP out, pool)", ("ringpost::outbound::",)),
    ("DNS", ("hickory", "ringpost::dns::")),
    ("injection HTTP", ("ringpost::http::",)),
    ("other ringpost code", ("ringpost::",)),
]


def part_of(frames):
    for frame in reversed(frames):
        name = frame[:-4] if frame.endswith("_[k]") else frame
        for part, prefixes in PARTS:
            if name.startswith(prefixes):
                return part
    return "runtime (glommio, io_uring, threads)"


def main(path):
    total = 0
    samples = defaultdict(int)
    kernel = defaultdict(int)
    entries = defaultdict(int)  # the first kernel frame: which call went in
    leaves = defaultdict(int)  # the innermost frame outside the kernel
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        part = part_of(frames)
        samples[part] += n
        if frames[-1].endswith("_[k]"):
            kernel[part] += n
        user = [f for f in frames if not f.endswith("_[k]")]
        in_kernel = [f[:-4] for f in frames if f.endswith("_[k]")]
        if in_kernel:
            entries[next((f for f in in_kernel if "sys_" in f), in_kernel[0])] += n
        elif user:
            leaves[user[-1][:90]] += n
        total += n
    if total == 0:
        sys.exit("no samples")
    k_all = sum(kernel.values())
    print(f"{total / 1e6:.0f} ms of CPU sampled; kernel {100 * k_all / total:.0f}%, user {100 * (total - k_all) / total:.0f}%")
    print()
    print("| part | share of CPU | of it in the kernel |")
    print("|---|---:|---:|")
    for part, n in sorted(samples.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {100 * n / total:.1f}% | {100 * kernel[part] / n:.0f}% |")
    print()
    print("| system call or kernel path (first kernel frame) | share of CPU |")
    print("|---|---:|")
    for entry, n in sorted(entries.items(), key=lambda kv: -kv[1])[:12]:
        print(f"| {entry} | {100 * n / total:.1f}% |")
    print()
    print("| innermost user frame (self time) | share of CPU |")
    print("|---|---:|")
    for leaf, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:15]:
        print(f"| {leaf} | {100 * n / total:.1f}% |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
