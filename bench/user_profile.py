#!/usr/bin/env python3
"""bench/user_profile.py PERF.DATA...: user-mode samples grouped by what the leaf function is.

Record with `perf record -e cpu-clock:u -F 5000 -p PID` (or `-- COMMAND`); prints each group's share
of the user samples, largest first. Groups follow the layers of bench/README.md's profiles.
"""
import collections
import re
import subprocess
import sys

# First match wins: runtime and library groups before the modules, whose names also appear in the
# signatures of other modules' functions (a module is matched by its mangled prefix only).
GROUPS = [
    ("AES-GCM and record layer (libcrypto, tou_aead)", r"\(.*libcrypto|tou_aead"),
    ("retain/release", r"swift_retain|swift_release|RefCounts|swift_bridgeObjectRe|swift_isUniquelyReferenced"),
    ("exclusivity checks", r"swift_beginAccess|swift_endAccess|AccessSet"),
    ("thread-local lookups (__tls_get_addr)", r"__tls_get_addr"),
    ("malloc/free", r"malloc|cfree|_int_free|_int_malloc|swift_allocObject|swift_deallocClassInstance|"
                    r"swift_deallocObject|swift_slowAlloc|swift_slowDealloc|_swift_release_dealloc|unlink_chunk"),
    ("Swift concurrency runtime", r"libswift_Concurrency|libdispatch|libswiftDispatch|pthread_mutex|pthread_cond|"
                                  r"NSLock|libFoundation"),
    ("clock reads", r"vdso|clock_gettime"),
    ("memcpy/memmove", r"memmove|memcpy|memset|memcmp"),
    ("system call wrappers (user side)", r"sendmmsg|recvmmsg|__libc_|syscall|epoll"),
    ("TCP engine (TCPEngine)", r" \$s9TCPEngine"),
    ("DTLS module", r" \$s4DTLS"),
    ("wire parsing and writing (TOUWire)", r" \$s7TOUWire"),
    ("endpoint, session, connection (TOUDTLS)", r" \$s7TOUDTLS"),
    ("datagram I/O (DatagramIO)", r" \$s10DatagramIO|dio_"),
    ("SwiftNIO ByteBuffer and collections", r" \$s7NIOCore|NIOPosix|DequeModule"),
    ("benchmark tool", r" \$s13toudtls_bench|toudtls_cat"),
    ("other Swift runtime and standard library", r"libswiftCore|\$ss|\$sS|swift_"),
    ("libc, other", r"libc\.so"),
    ("dynamic linker", r"ld-linux"),
]


def leaves(path):
    text = subprocess.run(["perf", "script", "-F", "ip,sym,dso", "-i", path], capture_output=True, text=True,
                          check=True).stdout
    sample = []
    for line in text.splitlines():
        if line.strip():
            sample.append(line.strip())
        elif sample:
            yield sample[0]
            sample = []
    if sample:
        yield sample[0]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        counts = collections.Counter()
        for leaf in leaves(path):
            leaf = " " + leaf
            counts[next((name for name, pattern in GROUPS if re.search(pattern, leaf)), "other")] += 1
        total = sum(counts.values())
        print(f"{path}: {total} user samples")
        for name, n in counts.most_common():
            print(f"  {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
