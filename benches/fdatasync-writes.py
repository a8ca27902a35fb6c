#!/usr/bin/env python3
"""How many device writes one spool-style commit costs on a file system.

Usage: python3 benches/fdatasync-writes.py DIR

Writes 2 KiB records into a preallocated 16 MiB file in DIR, one fdatasync
per record (what a commit round does with one message), and reads the block
device's counters from /proc/diskstats around it. Run it on the file system
that will hold the spool (`spool.dir`), on an otherwise idle machine.

Two spacings: 0.5 ms between commits (a busy server) and 5 ms (a quiet one,
where the file's mtime has moved to a new tick before every commit). The
floor is 2 writes per commit: the data block and the cache flush. On ext4
without a journal we measured 3 at 5 ms: the fdatasync also writes the
inode's block because its mtime changed (`lazytime` does not avoid it);
ext4 with its journal (the mkfs default) stayed at 2. See README, "Running
as a service".
"""

import os
import sys
import time


def device_of(path):
    st = os.stat(path)
    sysfs = "/sys/dev/block/%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))
    return os.path.basename(os.path.realpath(sysfs))


def device_writes(dev):
    for line in open("/proc/diskstats"):
        fields = line.split()
        if fields[2] == dev:
            return int(fields[7]), int(fields[9])  # writes completed, sectors
    sys.exit("no /proc/diskstats line for %s" % dev)


def commits(fd, dev, count, gap, offset):
    record = b"x" * 2048
    before = device_writes(dev)
    times = []
    for _ in range(count):
        os.pwrite(fd, record, offset)
        offset += 4096
        start = time.perf_counter()
        os.fdatasync(fd)
        times.append(time.perf_counter() - start)
        time.sleep(gap)
    after = device_writes(dev)
    times.sort()
    return (
        (after[0] - before[0]) / count,
        (after[1] - before[1]) * 512 / count,
        times[count // 2] * 1e6,
    )


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    directory = sys.argv[1]
    dev = device_of(directory)
    path = os.path.join(directory, "ringpost-fdatasync-test.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # Written, not just fallocated: like the spool's recycled segments,
        # so no extent conversion hides in the numbers.
        os.write(fd, b"\0" * (16 << 20))
        os.fsync(fd)
        print("device %s" % dev)
        for gap, count, offset in ((0.0005, 500, 0), (0.005, 200, 8 << 20)):
            writes, size, median = commits(fd, dev, count, gap, offset)
            print(
                "%4.1f ms apart: %.2f device writes, %5.0f bytes per commit;"
                " fdatasync median %.0f us" % (gap * 1e3, writes, size, median)
            )
    finally:
        os.close(fd)
        os.unlink(path)


if __name__ == "__main__":
    main()
