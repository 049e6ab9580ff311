"""faultctl.py - build and drive tests/faults/faultshim.c (see README.md).

    from faultctl import build_shim, FaultCtl, MALLOC, ACCEPT, READ_ERR, ...

    so = build_shim(tmp_dir)                  # cc -shared, once per run
    fc = FaultCtl(tmp_dir / "faults.ctl")     # the shared control file
    env = fc.env(so)                          # LD_PRELOAD + FAULTSHIM_CTL
    ... start wsguard with env ...
    fc.wait_attached(pid)
    fc.arm(READ_ERR, where=CLIENT, skip=3, budget=1)   # the 4th client read
    fc.injected(READ_ERR)                     # how many were injected
    fc.disarm_all()

The layout of struct ctl in faultshim.c is mirrored here with ctypes; the
shim checks magic and version, and writes its size and pid back.
"""

import ctypes
import mmap
import os
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM_SRC = HERE / "faultshim.c"

MAGIC = 0x57534654
VERSION = 1
UNLIMITED = 0xFFFFFFFF
TRACE_N = 4096

# Kinds (enum kind in faultshim.c)
MALLOC, ACCEPT, READ_ERR, READ_EAGAIN, READ_SHORT, WRITE_ERR, WRITE_EAGAIN, \
    WRITE_SHORT = range(8)
KIND_NAMES = ["malloc", "accept", "read_err", "read_eagain", "read_short",
              "write_err", "write_eagain", "write_short"]

# rule.where
CLIENT = 1
BACKEND = 2
BOTH = CLIENT | BACKEND
WORKERS = 1          # for MALLOC: only threads that called accept4


class Rule(ctypes.Structure):
    _fields_ = [("on", ctypes.c_uint32), ("where", ctypes.c_uint32),
                ("skip", ctypes.c_uint32), ("budget", ctypes.c_uint32),
                ("ppm", ctypes.c_uint32), ("err", ctypes.c_uint32),
                ("arg", ctypes.c_uint32), ("arg2", ctypes.c_uint32),
                ("seen", ctypes.c_uint64), ("injected", ctypes.c_uint64),
                ("last_caller", ctypes.c_uint64),
                ("last_size", ctypes.c_uint64)]


class Ctl(ctypes.Structure):
    _fields_ = [("magic", ctypes.c_uint32), ("version", ctypes.c_uint32),
                ("size", ctypes.c_uint32), ("pid", ctypes.c_uint32),
                ("seed", ctypes.c_uint64), ("reserved", ctypes.c_uint64),
                ("r", Rule * 8),
                ("live", ctypes.c_int64), ("mallocs", ctypes.c_uint64),
                ("worker_mallocs", ctypes.c_uint64),
                ("accepts", ctypes.c_uint64), ("connects", ctypes.c_uint64),
                ("connect_mark", ctypes.c_uint64),
                ("pad", ctypes.c_uint64 * 2),
                ("trace", ctypes.c_uint32 * TRACE_N),
                ("trace_caller", ctypes.c_uint64 * TRACE_N)]


def build_shim(out_dir, cc=None):
    """Compile faultshim.c into out_dir/faultshim.so; returns its path."""
    cc = cc or os.environ.get("FAULTSHIM_CC", "cc")
    out = Path(out_dir) / "faultshim.so"
    cmd = [cc, "-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror",
           "-fPIC", "-shared", "-o", str(out), str(SHIM_SRC), "-ldl"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("building the fault shim failed: %s\n%s%s"
                           % (" ".join(cmd), r.stdout, r.stderr))
    return str(out)


class FaultCtl:
    def __init__(self, path, seed=None):
        self.path = str(path)
        size = ctypes.sizeof(Ctl)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            length = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
            os.ftruncate(fd, length)
            self._mm = mmap.mmap(fd, length)
        finally:
            os.close(fd)
        self.c = Ctl.from_buffer(self._mm)
        self.c.seed = seed if seed is not None else int.from_bytes(os.urandom(8), "little")
        self.c.version = VERSION
        self.c.magic = MAGIC
        self._size = size

    def env(self, shim_so):
        """Environment variables that load the shim into a child."""
        return {"LD_PRELOAD": shim_so, "FAULTSHIM_CTL": self.path}

    def wait_attached(self, pid, timeout=10.0):
        deadline = time.monotonic() + timeout
        while self.c.pid != pid:
            if time.monotonic() > deadline:
                raise AssertionError(
                    "the fault shim did not attach to pid %d (ctl pid %d)"
                    % (pid, self.c.pid))
            time.sleep(0.01)
        assert self.c.size == self._size, (
            "faultshim.c and faultctl.py disagree on struct ctl: %d != %d"
            % (self.c.size, self._size))

    def arm(self, kind, where=0, skip=0, budget=UNLIMITED, ppm=0, err=0,
            arg=0, arg2=0):
        """Set a rule and switch it on (the switch is written last).
        skip: matching calls let through first; budget: faults to inject
        (UNLIMITED: no end); ppm: chance per matching call in millionths
        (0: every call)."""
        r = self.c.r[kind]
        r.on = 0
        r.where, r.skip, r.budget, r.ppm = where, skip, budget, ppm
        r.err, r.arg, r.arg2 = err, arg, arg2
        r.on = 1

    def disarm(self, kind):
        self.c.r[kind].on = 0

    def disarm_all(self):
        for k in range(len(KIND_NAMES)):
            self.c.r[k].on = 0

    def reset_counts(self, kind):
        r = self.c.r[kind]
        r.seen = 0
        r.injected = 0

    def injected(self, kind):
        return self.c.r[kind].injected

    def seen(self, kind):
        return self.c.r[kind].seen

    def last(self, kind):
        """(return address, size) of the last faulted call."""
        r = self.c.r[kind]
        return r.last_caller, r.last_size

    def budget(self, kind):
        return self.c.r[kind].budget

    @property
    def live(self):
        return self.c.live

    @property
    def mallocs(self):
        return self.c.mallocs

    @property
    def worker_mallocs(self):
        return self.c.worker_mallocs

    @property
    def accepts(self):
        return self.c.accepts

    def trace(self, n=None):
        """Sizes of the matching allocations seen while the malloc rule
        was on, by ordinal (0-based; the first TRACE_N)."""
        n = min(self.seen(MALLOC) if n is None else n, TRACE_N)
        return list(self.c.trace[:n])

    def trace_callers(self, n=None):
        """Return addresses of those allocations' callers."""
        n = min(self.seen(MALLOC) if n is None else n, TRACE_N)
        return list(self.c.trace_caller[:n])

    @property
    def connects(self):
        return self.c.connects

    @property
    def connect_mark(self):
        """The malloc rule's seen count when the last backend connect
        was made (its ordinal among the allocations)."""
        return self.c.connect_mark

    def counts(self):
        return {KIND_NAMES[k]: (self.c.r[k].seen, self.c.r[k].injected)
                for k in range(len(KIND_NAMES))}


def symbolize(pid, addrs, binary=None):
    """Name each return address of a live process: "file+0xOFF" and, for
    binary (wsguard, built with -g), "function at file:line" from
    addr2line. Returns a list of strings."""
    maps = []
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            maps.append((lo, hi, int(parts[2], 16), parts[5]))
    out = []
    for a in addrs:
        name = "0x%x" % a
        for lo, hi, off, path in maps:
            if lo <= a < hi:
                rel = a - lo + off
                name = "%s+0x%x" % (os.path.basename(path), rel)
                if binary and os.path.realpath(path) == os.path.realpath(binary):
                    r = subprocess.run(["addr2line", "-f", "-i", "-C", "-e", path,
                                        "0x%x" % (rel - 1)],
                                       capture_output=True, text=True)
                    if r.returncode == 0:
                        lines = r.stdout.split("\n")
                        name += " (%s at %s)" % (lines[0], os.path.basename(lines[1]))
                break
        out.append(name)
    return out
