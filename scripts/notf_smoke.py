"""tfversky without TensorFlow: what works on JAX or PyTorch, and what says it needs TensorFlow.

    KERAS_BACKEND=jax   python scripts/notf_smoke.py --expect-fused   # a venv without TensorFlow
    KERAS_BACKEND=torch python scripts/notf_smoke.py --expect-fused
    KERAS_BACKEND=jax   python scripts/notf_smoke.py --hide-tensorflow  # any venv: as if absent

In an environment without TensorFlow (``pip install --no-build-isolation '.[jax]'``, see
docs/install.md), or with ``--hide-tensorflow`` (``sys.modules["tensorflow"] = None``: every
import of it fails as if it were not installed), checks that

* ``import tfversky`` imports no TensorFlow; the pure loss and ``implementation="auto"`` agree;
  with ``--expect-fused``, ``implementation="fused"`` runs the backend's binding and agrees;
* a small ``models.unet3d`` trains for one epoch with the loss and ``metrics.DiceScore``,
  ``inference.predict_volume`` segments a volume and ``metrics.evaluate`` scores it;
* the TensorFlow-only entry points refuse in one line naming ``pip install
  'tfversky[tensorflow]'``: ``import tfds_ms`` (the TFDS builder), loading the TensorFlow op
  library, ``tfversky train``, and
  ``examples/train_ms.py`` when run from a checkout; ``train`` creates nothing.

Run it outside the checkout to check an installed tfversky (the script's folder, not the
working directory, is on sys.path). Exit status 0 when everything holds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import runpy
import sys
import tempfile
import warnings
from pathlib import Path

INSTALL_HINT = "pip install 'tfversky[tensorflow]'"


def _refusal(call) -> tuple[int, str]:
    """Runs a command line's ``call()``; its exit code and its stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = call()
        except SystemExit as exit_:
            code = exit_.code
    return code, stderr.getvalue()


def _check_refused(what: str, code: int, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"{what}: exit code {code}, stderr:\n{stderr}"
    assert len(lines) == 1 and INSTALL_HINT in lines[0], f"{what}: stderr:\n{stderr}"
    print(f"{what}: {lines[0]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hide-tensorflow", action="store_true",
                        help="make every import of tensorflow fail, as if it were not installed")
    parser.add_argument("--expect-fused", action="store_true",
                        help="the backend's fused binding must load (built by the install)")
    args = parser.parse_args(argv)
    if args.expect_fused:  # e.g. "auto" falling back to the pure sums for some call
        warnings.filterwarnings("error", message="tfversky:", category=RuntimeWarning)
    if args.hide_tensorflow:
        sys.modules["tensorflow"] = None  # `import tensorflow` raises ModuleNotFoundError
    elif importlib.util.find_spec("tensorflow") is not None:
        parser.error("this Python has TensorFlow: run it in an environment without it, or "
                     "pass --hide-tensorflow")

    import keras
    import numpy as np

    import tfversky
    from tfversky import _extras, _loader, cli, inference, metrics, models

    backend = keras.backend.backend()
    print(f"tfversky {tfversky.__version__} from {tfversky.__file__}, Keras {keras.__version__} "
          f"on {backend}")
    assert backend != "tensorflow", "set KERAS_BACKEND=jax or torch"
    assert sys.modules.get("tensorflow") is None, "import tfversky imported TensorFlow"

    rng = np.random.default_rng(0)
    labels = np.zeros((2, 16, 16, 16), "int32")
    labels[:, 4:10, 5:11, 6:12] = 1
    images = (rng.normal(size=labels.shape + (1,)) + 2.0 * labels[..., None]).astype("float32")
    logits = rng.normal(size=labels.shape + (2,)).astype("float32")

    def loss(implementation):
        value = tfversky.tversky_loss(labels, logits, from_logits=True,
                                      implementation=implementation)
        return keras.ops.convert_to_numpy(value)

    pure = loss("tf")
    assert np.allclose(loss("auto"), pure, atol=1e-6)
    if args.expect_fused:
        assert np.allclose(loss("fused"), pure, atol=1e-6), (loss("fused"), pure)
        print(f"fused loss == pure loss ({pure.round(6).tolist()}); binding: "
              f"{_binding(backend)}")
    else:
        print(f"pure loss {pure.round(6).tolist()}; auto agrees")

    model = models.unet3d(input_shape=(None, None, None, 1), num_classes=2, base_filters=4,
                          depth=2, normalization="instance")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=tfversky.TverskyLoss(0.3, 0.7, implementation="auto"),
                  metrics=[metrics.DiceScore()])
    history = model.fit(images, labels, batch_size=1, epochs=1, verbose=0)
    print(f"fit: {({k: round(float(v[-1]), 4) for k, v in history.history.items()})}")
    probabilities = inference.predict_volume(model, images[0], patch_size=16, progress=False)
    assert probabilities.shape == (16, 16, 16, 2), probabilities.shape
    scores = metrics.evaluate(labels[0], probabilities[..., 1])
    print(f"predict_volume + evaluate: DSC {scores['dsc']:.4f}, sensitivity "
          f"{scores['sensitivity']:.4f}")

    try:
        import tfds_ms  # noqa: F401
    except _extras.MissingExtraError as error:
        assert INSTALL_HINT in str(error) and "\n" not in str(error), str(error)
        print(f"import tfds_ms: {error}")
    else:
        raise AssertionError("import tfds_ms worked without TensorFlow")
    try:
        _loader.load()  # the TensorFlow op library
    except _extras.MissingExtraError as error:
        assert INSTALL_HINT in str(error), str(error)
        print(f"the TensorFlow op: {error}")
    else:
        raise AssertionError("the TensorFlow op loaded without TensorFlow")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        _check_refused("tfversky train", *_refusal(lambda: cli.main(["train", "--out", str(out)])))
        assert not out.exists(), "tfversky train wrote its --out before refusing"
        example = Path(tfversky.__file__).resolve().parents[1] / "examples" / "train_ms.py"
        if example.is_file():  # a checkout: the example script too
            _check_refused("examples/train_ms.py", *_refusal(
                lambda: runpy.run_path(str(example), run_name="__not_main__")["main"](
                    ["--out", str(out)])))
    assert sys.modules.get("tensorflow") is None, "TensorFlow was imported"
    print(f"without TensorFlow on {backend}: all checks passed")
    return 0


def _binding(backend: str) -> str:
    from tfversky import _loader

    if backend == "jax":
        return _loader.load_jax()[1]["path"]
    return _loader.load_torch()["path"]


if __name__ == "__main__":
    sys.exit(main())
