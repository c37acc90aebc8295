"""Wheel-install smoke test: build a wheel of this checkout, install it in a fresh venv, use it.

    python scripts/wheel_smoke.py                 # CI: the wheel holds the op; one fused loss
    python scripts/wheel_smoke.py --no-compiler   # CXX=/bin/false: the wheel has no op; the
                                                  # pure loss works, auto warns once, fused
                                                  # raises naming the reason and the command

The wheel is built from a copy of the checkout's files (git ls-files: tracked and untracked
but not ignored) with --no-build-isolation, against this Python's TensorFlow, with
CMAKE_ARGS="-DTFVERSKY_CUDA=OFF -DTFVERSKY_PYBIND=OFF -DTFVERSKY_XLA=OFF -DTFVERSKY_JAX=OFF
-DTFVERSKY_TORCH=OFF" unless CMAKE_ARGS is set (the op's CPU kernels only, no XLA lowering
and no JAX/PyTorch bindings: about 5 minutes on a busy 2-core machine,
most of it compiling). It is installed with --no-deps into a
venv whose .pth file adds this Python's site-packages, so TensorFlow is reused, not
downloaded: nothing touches the network. The check runs outside the checkout, so it imports
the installed wheel. Exit status 0 when everything holds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import sys, textwrap, warnings
    import numpy as np
    import tfversky
    from tfversky import fused

    venv, expect_op = sys.argv[1], sys.argv[2] == "op"
    assert tfversky.__file__.startswith(venv), f"imported {tfversky.__file__}, not the wheel"
    labels = np.zeros((1, 8, 8, 8), "uint8"); labels[0, 2:5, 2:5, 2:5] = 1
    logits = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 2)).astype("float32")
    pure = tfversky.tversky_loss(labels, logits, from_logits=True, implementation="tf")
    if expect_op:
        loss = tfversky.tversky_loss(labels, logits, from_logits=True, implementation="fused")
        assert np.allclose(loss, pure, atol=1e-6), (loss, pure)
        print(f"fused loss {float(loss[0]):.6f} == pure; op: {fused.build_info()['path']}")
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                auto = tfversky.tversky_loss(labels, logits, from_logits=True)
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "not available" in messages[0], messages
        assert np.array_equal(auto, pure)
        try:
            tfversky.tversky_loss(labels, logits, from_logits=True, implementation="fused")
        except fused.FusedOpUnavailableError as error:
            message = str(error)
        else:
            raise AssertionError("implementation='fused' ran without the op")
        for part in ("This installation was made without the op", "C++ compiler",
                     "pip install --no-build-isolation"):
            assert part in message, (part, message)
        print("pure loss works; auto warned once; fused raised:")
        print(textwrap.indent(message, "    "))
""")


def _run(command, **kwargs):
    shown = [str(c) if len(str(c)) < 100 else "<script>" for c in command]
    print("+", " ".join(shown), flush=True)
    return subprocess.run(command, check=True, **kwargs)


def copy_checkout(target: Path) -> None:
    """The files git would ship (tracked, and untracked but not ignored), without build outputs."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compiler", action="store_true",
                        help="build with CXX=/bin/false: the wheel must install without the op")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tfversky-wheel-"))
    try:
        source, dist, venv = work / "src", work / "dist", work / "venv"
        copy_checkout(source)
        env = dict(os.environ)
        env.pop("TFVERSKY_REQUIRE_OP", None)
        env.setdefault("CMAKE_ARGS", "-DTFVERSKY_CUDA=OFF -DTFVERSKY_PYBIND=OFF -DTFVERSKY_XLA=OFF "
                                     "-DTFVERSKY_JAX=OFF -DTFVERSKY_TORCH=OFF")
        if args.no_compiler:
            env.update(CXX="/bin/false", CC="/bin/false")
        _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
              "--no-index", "-w", str(dist), str(source)], env=env)
        wheel = next(dist.glob("tfversky-*.whl"))
        _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
        # This Python's packages (TensorFlow), after the venv's own (the wheel).
        (purelib / "_tfversky_reuse.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
              "--no-deps", "--no-index", str(wheel)])
        _run([str(venv / "bin" / "python"), "-c", CHECK, str(venv),
              "none" if args.no_compiler else "op"], cwd=work)
    except subprocess.CalledProcessError as error:
        print(f"wheel smoke test FAILED: exit status {error.returncode} of "
              f"{' '.join(map(str, error.cmd[:4]))} ...", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wheel smoke test passed ({'no compiler' if args.no_compiler else 'with the op'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
