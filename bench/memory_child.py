"""A child run of bench_memory.py (``--profile``): the daemon in-process, measured from inside.

Started by ``bench_memory.profile_run`` with the daemon's settings in the environment. With
``BENCH_TRACE_FRAMES`` > 0 tracemalloc starts before anything else is imported (top
allocation sites after ready); with 0 the allocators' own account is reported instead
(pymalloc arenas held vs live blocks, glibc heap in use vs free), then what gc.collect() +
malloc_trim(0) give back, and the deep size of the MirrorState. The daemon is started through
``testkit.daemon.RunningDaemon`` and read through its public attributes; nothing is patched.
Prints one JSON line.
"""
import ctypes, gc, json, os, sys, time, tracemalloc  # noqa: E401
from dataclasses import fields, is_dataclass
from pathlib import Path

NFRAMES = int(os.environ.get("BENCH_TRACE_FRAMES", "0"))  # 0 = no tracemalloc (allocator accounting)
if NFRAMES:
    tracemalloc.start(NFRAMES)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # testkit/
from sidecar.config import Config  # noqa: E402
from testkit.daemon import RunningDaemon  # noqa: E402

def top_sites(snap, n):
    return [{"where": f"{st.traceback[0].filename.split('site-packages/')[-1].replace(os.getcwd() + '/', '')}:{st.traceback[0].lineno}",
             "mib": round(st.size / 1048576, 2), "blocks": st.count} for st in snap.statistics("lineno")[:n]]

def status_kib():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0])
    return out

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]

def mallinfo():
    # glibc's heap: bytes obtained (arena + mmapped), in use (uordblks), free inside it (fordblks).
    try:
        f = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    f.restype = MallInfo2
    m = f()
    mb = lambda v: round(v / 1048576, 1)
    return {"heap_mib": mb(m.arena), "mmapped_mib": mb(m.hblkhd), "in_use_mib": mb(m.uordblks),
            "free_in_heap_mib": mb(m.fordblks), "releasable_top_mib": mb(m.keepcost)}

def pymalloc():
    sys.stderr.write("@@pymalloc-begin\n"); sys.stderr.flush()
    sys._debugmallocstats()
    sys.stderr.write("@@pymalloc-end\n"); sys.stderr.flush()

def deep(obj, seen):
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep(k, seen) + deep(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep(x, seen) for x in obj)
    elif is_dataclass(obj) and not isinstance(obj, type):
        size += sum(deep(getattr(obj, f.name), seen) for f in fields(obj))
    elif hasattr(type(obj), "__slots__") and not isinstance(obj, type):
        # slots classes (HubState, FileState): their stored attributes, not the properties
        size += sum(deep(getattr(obj, n), seen) for n in type(obj).__slots__ if hasattr(obj, n))
    return size

running = RunningDaemon(Config())
daemon = running.daemon
t0 = time.monotonic()
running.start(timeout=7200)
ready_s = time.monotonic() - t0
time.sleep(2)
out = {"traced": bool(NFRAMES), "ready_seconds": round(ready_s, 2), "proc_after_ready_kib": status_kib()}
if NFRAMES:
    traced_cur, traced_peak = tracemalloc.get_traced_memory()
    out["traced_current_mib"] = round(traced_cur / 1048576, 1)
    out["traced_peak_mib"] = round(traced_peak / 1048576, 1)
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    out["top_lines"] = top_sites(snap, 25)
    if NFRAMES > 1:
        out["top_tracebacks"] = [{"mib": round(st.size / 1048576, 2), "blocks": st.count,
                                  "frames": [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in st.traceback]}
                                 for st in snap.statistics("traceback")[:6]]
    by_file = {}
    for st in snap.statistics("filename"):
        name = st.traceback[0].filename
        if "site-packages/" in name:
            key = name.split("site-packages/")[1].split("/")[0]
        elif "/sidecar/" in name:
            key = "sidecar/" + name.rsplit("/", 1)[1]
        elif "/lib/python3" in name:
            key = "stdlib"
        else:
            key = name
        by_file[key] = by_file.get(key, 0) + st.size
    out["by_package_mib"] = dict(sorted(((k, round(v / 1048576, 2)) for k, v in by_file.items()),
                                        key=lambda kv: -kv[1])[:20])
    del snap
else:
    # Untraced: the allocators' own account of the RSS, then what a collection and a trim return.
    out["mallinfo"] = mallinfo()
    pymalloc()
    gc.collect()
    out["after_gc_kib"] = status_kib()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        out["after_malloc_trim_kib"] = status_kib()
        out["mallinfo_after_trim"] = mallinfo()
    except OSError:
        pass
# Deep sizes last: walking the objects allocates (ids in a set), which must not show above.
st = daemon.state
seen = set()
out["mirror_state_mib"] = {
    "hubs": round(deep(st.hubs, seen) / 1048576, 2),
    "episodes": round(deep(st.episodes, seen) / 1048576, 2),
    "snapshots": round(deep(st.snapshots, seen) / 1048576, 2),
    "files": round(deep(st.files, seen) / 1048576, 2),
}
del seen
out["mirror_state_entries"] = {"hub_entries": sum(len(v) for v in st.hubs.values()), "episodes": len(st.episodes),
                               "files": len(st.files)}
out["pending_paths"] = len(daemon.pending)
running.stop(60)
print(json.dumps(out))
