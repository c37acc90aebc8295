"""Benchmark: forward + backward of the Tversky loss, fused op vs pure, on a Keras backend.

Implementations, all on the same inputs (float32 logits with 2 classes, uint8 labels, 1 %
lesion voxels), gradient w.r.t. the logits included:

* fused:       ``tversky_loss(..., implementation="fused")`` in a ``tf.function``
* fused op:    the two ops alone (sums, then gradient), no loss glue or input checks
* TF graph:    ``implementation="tf"`` in a ``tf.function``
* fused inside XLA, pure TF with XLA: ``implementation="fused"`` and ``"tf"`` in a
               ``tf.function(jit_compile=True)`` taking the labels as an input (not a
               constant XLA could fold) and consuming the gradient inside the step
               (its sum of squares), as a training step would: the fused op's lowering
               (custom calls, csrc/xla) against XLA's own fusion of the pure loss
* MONAI:       ``monai.losses.TverskyLoss`` on PyTorch, if torch and monai are installed
* floor:       a 2-thread memcpy moving as many bytes as reading the logits and labels
               twice and writing the gradient once, timed in the same rounds ("floor at
               best copy rate": the same bytes at the best copy rate seen in the run)

Timings are interleaved round-robin (every implementation once per round, the order
rotated each round so that none always follows the same one) so that load from other
processes hits them alike; the table gives medians and ratios of one run. PyTorch's
OpenMP threads are told not to spin after their work (OMP_WAIT_POLICY=PASSIVE), or they
would take the cores from whatever runs next. Then
one training step (forward, backward, Adam) of a small 3D U-Net with the fused and with the
pure loss, on batch 2 of 64^3 x 3 (the loss is a small part of such a step).

With ``--backend jax`` or ``--backend torch`` the same volumes run on that Keras backend
(no TensorFlow imported), against the compiled pure loss:

* jax:   fused (``implementation="fused"``: the XLA FFI binding, csrc/jax) and the pure
         ``keras.ops`` loss, both as ``jax.jit(jax.value_and_grad(loss))``, and MONAI;
* torch: fused (the ``torch.library`` binding, csrc/torch) eager and under
         ``torch.compile``, the pure loss under ``torch.compile``, and MONAI;

with the same memory floor, interleaved in one run.

    python benchmarks/bench_loss.py                       # writes benchmarks/results/bench_loss.json
    python benchmarks/bench_loss.py --repeats 5 --quick   # 2x64x64x64 only, no U-Net
    python benchmarks/bench_loss.py --backend jax         # bench_loss_jax.json (torch: _torch)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads

BACKENDS = ("tensorflow", "jax", "torch")


def _backend_argument(argv) -> str:
    """--backend, read before Keras is imported (Keras picks its backend at import)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
    return "tensorflow"


BACKEND = _backend_argument(sys.argv[1:]) if __name__ == "__main__" else \
    os.environ.get("KERAS_BACKEND", "tensorflow")  # imported (scripts/gpu_check.py): as set
if BACKEND in BACKENDS:
    os.environ["KERAS_BACKEND"] = BACKEND

import keras  # noqa: E402

if BACKEND == "tensorflow":
    import tensorflow as tf  # noqa: E402

import tfversky  # noqa: E402
from tfversky import _loader, fused  # noqa: E402

ALPHA, BETA = 0.3, 0.7
SHAPES = ((2, 64, 64, 64), (1, 128, 224, 256))


def copy_step(nbytes: int, threads: int = 2):
    """A memcpy of nbytes / 2 bytes (so nbytes move: half read, half written), on
    `threads` threads: the memory floor of a step that moves nbytes, timed like the others."""
    count = max(nbytes // 8, threads)
    src = np.ones(count, np.float32)
    dst = np.zeros(count, np.float32)
    bounds = np.linspace(0, count, threads + 1).astype(int)

    def part(i):
        np.copyto(dst[bounds[i]:bounds[i + 1]], src[bounds[i]:bounds[i + 1]])

    def step(_):
        workers = [threading.Thread(target=part, args=(i,)) for i in range(1, threads)]
        for w in workers:
            w.start()
        part(0)
        for w in workers:
            w.join()

    return step


def best_copy_rate(megabytes=256, repeats=7) -> float:
    """Best copy rate in bytes/s (read + written) over `repeats` 2-thread copies."""
    step = copy_step(megabytes * 2**20)
    best = min(_timed(step) for _ in range(repeats))
    return megabytes * 2**20 / best


def _timed(step, arg=None) -> float:
    start = time.perf_counter()
    step(arg)
    return time.perf_counter() - start


def make_inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=tuple(shape) + (2,)).astype(np.float32)
    labels = (rng.random(shape) < 0.01).astype(np.uint8)
    return logits, labels


def tf_loss_step(labels, implementation):
    labels = tf.constant(labels)

    @tf.function
    def step(logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = tf.reduce_mean(tfversky.tversky_loss(
                labels, logits, alpha=ALPHA, beta=BETA, from_logits=True,
                implementation=implementation))
        return loss, tape.gradient(loss, logits)

    return step


def xla_loss_step(labels, implementation):
    """jit_compile=True step of (logits, labels): the loss and the gradient's sum of squares."""
    labels = tf.constant(labels)

    @tf.function(jit_compile=True)
    def step(logits, labels):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = tf.reduce_mean(tfversky.tversky_loss(
                labels, logits, alpha=ALPHA, beta=BETA, from_logits=True,
                implementation=implementation))
        return loss, tf.reduce_sum(tf.square(tape.gradient(loss, logits)))

    return lambda logits: step(logits, labels)


def fused_op_step(labels):
    """The two ops alone, with the upstream gradients of the default loss held fixed."""
    library = _loader.load()
    labels = tf.constant(labels)

    @tf.function
    def step(logits):
        tp, fp, fn = library.tfversky_fused_tversky_sums(logits, labels, Tsum=tf.float32,
                                                         from_logits=True)
        grad = library.tfversky_fused_tversky_sums_grad(logits, labels, -tp, fp, fn,
                                                        from_logits=True)
        return tp, grad

    return step


def monai_step(logits, labels):
    """MONAI's TverskyLoss (alpha weighs FP, beta FN, as here) on channels-first tensors."""
    try:
        import torch
        from monai.losses import TverskyLoss
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loss_fn = TverskyLoss(include_background=False, to_onehot_y=True, softmax=True,
                          alpha=ALPHA, beta=BETA)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(logits, -1, 1))).to(device)
    x.requires_grad_(True)
    y = torch.from_numpy(labels[:, None].astype(np.int64)).to(device)

    def step(_):  # the TensorFlow tensor passed by the round-robin is not used
        x.grad = None
        loss = loss_fn(x, y)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    return step


def jax_steps(logits, labels):
    """jax.jit(value_and_grad) of the mean loss, fused and pure (the gradient is an output,
    as in the TensorFlow rows)."""
    import jax
    import jax.numpy as jnp

    y, target = jnp.asarray(logits), jnp.asarray(labels)

    def make(implementation):
        def loss(y, target):
            return jnp.mean(tfversky.tversky_loss(target, y, alpha=ALPHA, beta=BETA,
                                                  from_logits=True,
                                                  implementation=implementation))

        compiled = jax.jit(jax.value_and_grad(loss))
        return lambda _: jax.block_until_ready(compiled(y, target))

    return {"fused": make("fused"), "pure, jax.jit": make("tf")}


def torch_steps(logits, labels):
    """Forward + backward of the mean loss on PyTorch (the GPU if it has one): fused eager and
    compiled, pure compiled."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, target = torch.from_numpy(logits).to(device), torch.from_numpy(labels).to(device)

    def make(implementation, compiled):
        def loss(y):
            return tfversky.tversky_loss(target, y, alpha=ALPHA, beta=BETA, from_logits=True,
                                         implementation=implementation).mean()

        function = torch.compile(loss) if compiled else loss

        def step(_):
            y = x.detach().requires_grad_(True)
            value = function(y)
            value.backward()
            if device == "cuda":
                torch.cuda.synchronize()
            return value, y.grad

        return step

    return {"fused": make("fused", False), "fused, torch.compile": make("fused", True),
            "pure, torch.compile": make("tf", True)}


def bench_backend(shapes, repeats, rate):
    """The --backend jax|torch rows: fused, the compiled pure loss (and MONAI), the floor."""
    rows = []
    for shape in shapes:
        logits, labels = make_inputs(shape)
        traffic = 2 * (logits.nbytes + labels.nbytes) + logits.nbytes
        steps = (jax_steps if BACKEND == "jax" else torch_steps)(logits, labels)
        if (monai := monai_step(logits, labels)) is not None:  # PyTorch, on either backend
            steps["MONAI"] = monai
        steps["floor"] = copy_step(traffic)
        times = time_round_robin(steps, None, repeats)
        times["floor at best copy rate"] = traffic / rate
        rows.append(dict(shape="x".join(map(str, shape)), voxels=int(np.prod(shape)),
                         traffic_bytes=traffic, ms={k: v * 1e3 for k, v in times.items()}))
    return rows


def time_round_robin(steps: dict, args, repeats: int) -> dict:
    """Median seconds per call of each step, calls interleaved round-robin."""
    for step in steps.values():  # warm-up: tracing, XLA compilation, first allocations
        step(args)
        step(args)
    samples = {name: [] for name in steps}
    names = list(steps)
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            samples[name].append(_timed(steps[name], args))
    return {name: statistics.median(s) for name, s in samples.items()}


def bench_loss(shapes, repeats, rate):
    rows = []
    for shape in shapes:
        logits, labels = make_inputs(shape)
        traffic = 2 * (logits.nbytes + labels.nbytes) + logits.nbytes
        steps = {
            "fused": tf_loss_step(labels, "fused"),
            "fused op": fused_op_step(labels),
            "TF graph": tf_loss_step(labels, "tf"),
            "fused inside XLA": xla_loss_step(labels, "fused"),
            "pure TF with XLA": xla_loss_step(labels, "tf"),
            "floor": copy_step(traffic),
        }
        monai = monai_step(logits, labels)
        if monai is not None:
            steps["MONAI"] = monai
        times = time_round_robin(steps, tf.constant(logits), repeats)
        times["floor at best copy rate"] = traffic / rate
        rows.append(dict(shape="x".join(map(str, shape)), voxels=int(np.prod(shape)),
                         traffic_bytes=traffic, ms={k: v * 1e3 for k, v in times.items()}))
    return rows


def bench_unet(repeats):
    """One training step of a small 3D U-Net (tfversky.models.unet3d) with each loss (on JAX
    compiled by XLA, as Keras does by default there)."""
    from tfversky.models import unet3d

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 64, 64, 64, 3)).astype(np.float32)
    y = (rng.random((2, 64, 64, 64)) < 0.01).astype(np.float32)
    models = {}
    for implementation in ("fused", "tf"):
        keras.utils.set_random_seed(0)
        model = unet3d(input_shape=(64, 64, 64, 3), num_classes=2, final_activation=None)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=BACKEND == "jax",
                      loss=tfversky.TverskyLoss(ALPHA, BETA, from_logits=True,
                                                implementation=implementation))
        models[implementation] = model
    steps = {name: (lambda _, m=m: m.train_on_batch(x, y)) for name, m in models.items()}
    parameters = models["tf"].count_params()
    return dict(parameters=parameters, ms={k: v * 1e3 for k, v in
                                           time_round_robin(steps, None, repeats).items()})


def print_tables(result):
    print(f"\n## Loss forward + backward, Keras backend {result['backend']} "
          f"({result['machine']}, {result['date']})\n")
    print(f"Medians of {result['repeats']} interleaved rounds, ms; best copy rate "
          f"{result['copy_rate_gb_s']:.1f} GB/s (read + write).\n")
    for row in result["loss"]:
        ms = row["ms"]
        print(f"### {row['shape']} x 2 classes\n")
        print("| implementation | ms | vs fused | vs floor |\n|---|---|---|---|")
        for name in ms:
            print(f"| {name} | {ms[name]:.2f} | {ms[name] / ms['fused']:.2f}x | "
                  f"{ms[name] / ms['floor']:.2f}x |")
        if "fused inside XLA" in ms:
            print(f"\nInside XLA, pure / fused: "
                  f"{ms['pure TF with XLA'] / ms['fused inside XLA']:.2f}x\n")
    if "unet" in result:
        u = result["unet"]
        print(f"### U-Net training step (tfversky.models.unet3d, {u['parameters']:,} parameters, "
              f"batch 2 of 64^3 x 3)\n")
        print("| loss | ms per step |\n|---|---|")
        for name, value in u["ms"].items():
            print(f"| {name} | {value:.0f} |")
        print(f"\nFused saves {u['ms']['tf'] - u['ms']['fused']:.0f} ms per step "
              f"({100 * (1 - u['ms']['fused'] / u['ms']['tf']):.1f} %).")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="the small volume only, no U-Net")
    parser.add_argument("--unet", action="store_true",
                        help="with --backend jax|torch: also time a U-Net training step")
    parser.add_argument("--backend", choices=BACKENDS, default=BACKEND,
                        help="the Keras backend: tensorflow (the op, XLA, MONAI, a U-Net step), "
                             "jax or torch (the bindings against the compiled pure loss)")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/bench_loss.json "
                        "(bench_loss_jax.json, bench_loss_torch.json for the other backends)")
    args = parser.parse_args(argv)
    suffix = "" if args.backend == "tensorflow" else f"_{args.backend}"
    args.json = args.json or ROOT / f"benchmarks/results/bench_loss{suffix}.json"

    try:
        if args.backend == "tensorflow":
            _loader.load_xla()  # and the op library
        build = fused.build_info()
    except fused.FusedOpUnavailableError as error:
        sys.exit(str(error))
    rate = best_copy_rate()
    shapes = SHAPES[:1] if args.quick else SHAPES
    result = dict(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{_cpu_name()}, {os.cpu_count()} cores", backend=args.backend,
        versions=_versions(args.backend), build=build, repeats=args.repeats,
        copy_rate_gb_s=rate / 1e9)
    if args.backend == "tensorflow":
        result.update(xla_lowering=_loader.load_xla(), loss=bench_loss(shapes, args.repeats, rate))
        if not args.quick:
            result["unet"] = bench_unet(max(3, args.repeats // 3))
    else:
        result["loss"] = bench_backend(shapes, args.repeats, rate)
        if args.unet:
            result["unet"] = bench_unet(max(3, args.repeats // 3))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print_tables(result)
    print(f"\nJSON: {args.json}")


def _versions(backend) -> dict:
    versions = {"keras": keras.__version__}
    for name in {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"],
                 "torch": ["torch", "monai"]}[backend]:
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return versions


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
