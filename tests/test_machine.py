"""zaremba_ref.machine: what a number was computed on, and the one line that says when
OpenBLAS runs below the CPU's own kernel."""

from __future__ import annotations

import numpy as np

from zaremba_ref import machine


def test_the_fingerprint_names_what_decides_the_bits():
    f = machine.fingerprint()
    assert set(f) == {"machine", "cpu", "libc", "numpy", "numpy_simd", "blas",
                      "blas_version", "blas_kernel"}
    assert f["numpy"] == np.__version__ and f["numpy_simd"]
    assert f == machine.fingerprint()                     # the same twice


def test_blas_info_asks_the_library_itself_without_threadpoolctl(monkeypatch):
    """numpy-only: without threadpoolctl the OpenBLAS NumPy loaded answers by ctypes,
    the same library, version, kernel and thread count."""
    import sys
    with_tpc = machine.blas_info()
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)      # as if not installed
    alone = machine.blas_info()
    assert alone["library"] == with_tpc["library"]
    if alone["library"] == "openblas":
        assert (alone["kernel"], alone["threads"]) == (with_tpc["kernel"], with_tpc["threads"])
        assert alone["version"] == with_tpc["version"]


def test_the_note_says_when_openblas_runs_a_narrower_kernel_than_its_own(monkeypatch):
    monkeypatch.setattr(machine, "blas_info", lambda: {
        "library": "openblas", "version": "0.3.31", "kernel": "Haswell", "threads": 2,
        "path": "/lib/libopenblas.so"})
    monkeypatch.setattr(machine, "_own_kernel", lambda path: "SkylakeX")
    note = machine.forced_kernel_note({"OPENBLAS_CORETYPE": "Haswell"})
    assert note.count("\n") == 0 and "OPENBLAS_CORETYPE=Haswell" in note
    assert "SkylakeX" in note and "50%" in note and "env -u OPENBLAS_CORETYPE" in note
    assert machine.forced_kernel_note({}) is None                         # not forced
    monkeypatch.setattr(machine, "_own_kernel", lambda path: "Haswell")   # its own anyway
    assert machine.forced_kernel_note({"OPENBLAS_CORETYPE": "Haswell"}) is None
    monkeypatch.setattr(machine, "_own_kernel", lambda path: "Zen")       # as wide
    assert machine.forced_kernel_note({"OPENBLAS_CORETYPE": "Haswell"}) is None
