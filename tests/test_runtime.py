"""Process-wide runtime settings the CLIs apply (rrm_fast.runtime)."""
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

# Allocates a 64 MiB tensor and reports, from glibc's mallinfo2, how many bytes sat in
# mmapped blocks while it lived and how big the heap stayed after it was freed. glibc's
# default serves such a block with its own mmap and unmaps it on free (so every attack
# batch page-faults its activations in again); keep_freed_host_memory must put it on the
# heap and keep the heap after the free. (Page-fault counts would show the same, but this
# VM's kernel reclaims idle pages on its own, which makes them noisy.)
PROBE = textwrap.dedent("""
    import ctypes, json, sys, torch
    from rrm_fast.runtime import keep_freed_host_memory
    if sys.argv[1] == "keep":
        print(keep_freed_host_memory(), file=sys.stderr)
    if sys.argv[1] == "cli":  # what every CLI main runs
        from rrm_fast.errors import run_cli
        run_cli(lambda: 0)
    if sys.argv[1] == "import":
        import rrm_fast.losses, rrm_fast.eval, rrm_fast.train
    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    mmapped_before = libc.mallinfo2().hblkhd
    x = torch.empty(64 << 20, dtype=torch.uint8)
    x.fill_(1)
    mmapped = libc.mallinfo2().hblkhd - mmapped_before
    del x
    print(json.dumps({"mmapped": mmapped, "heap_after_free": libc.mallinfo2().arena}))
""")


def _probe(mode, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout), out.stderr.strip()


needs_glibc = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                                 reason="mallopt/mallinfo2 are glibc's")
MIB64 = 64 << 20


@needs_glibc
def test_keep_freed_host_memory_serves_big_blocks_from_a_kept_heap():
    default, _ = _probe("default")
    assert default["mmapped"] >= MIB64, f"probe did not see glibc's default mmap path: {default}"
    kept, note = _probe("keep")
    assert note == "host allocator: glibc keeps freed memory"
    assert kept["mmapped"] == 0, f"a 64 MiB block was still mmapped: {kept}"
    assert kept["heap_after_free"] >= MIB64, f"the heap was trimmed after the free: {kept}"


@needs_glibc
def test_keep_freed_host_memory_opt_out():
    res, note = _probe("keep", {"RRM_FAST_HOST_ALLOCATOR": "system"})
    assert note == "host allocator: glibc defaults (RRM_FAST_HOST_ALLOCATOR=system)"
    assert res["mmapped"] >= MIB64  # glibc's own behaviour


@needs_glibc
def test_every_cli_entry_keeps_freed_memory():
    res, _ = _probe("cli")
    assert res["mmapped"] == 0


@needs_glibc
def test_importing_rrm_fast_changes_no_allocator_setting():
    """Only the CLIs switch the allocator; a user importing the fused loss keeps glibc's defaults."""
    res, _ = _probe("import")
    assert res["mmapped"] >= MIB64


def test_cpu_amp_follows_the_hardware_not_a_timing():
    """--amp on a CPU: bf16 exactly where the CPU has native bf16 instructions, the same every time."""
    from rrm_fast.runtime import cpu_has_native_bf16, resolve_precision

    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {}\nmodel name\t: X\n"
    assert cpu_has_native_bf16(x86.format("avx512_bf16"))
    assert cpu_has_native_bf16(x86.format("amx_bf16 amx_tile"))
    assert not cpu_has_native_bf16(x86.format("avx512_vnni"))
    assert cpu_has_native_bf16("Features\t: fp asimd bf16 i8mm\n")  # Arm
    assert not cpu_has_native_bf16("")
    cpu = torch.device("cpu")
    names = {resolve_precision(True, cpu).name for _ in range(3)}
    assert names == {"bf16" if cpu_has_native_bf16() else "fp32"}
    assert resolve_precision(False, cpu).name == "fp32"
