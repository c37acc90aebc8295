"""Shared test setup: quiet TensorFlow, seeds, and the `gpu` marker's skip."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


def _has_gpu() -> bool:
    try:
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _has_gpu():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to TensorFlow)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def rng():
    """A fresh, seeded NumPy generator per test."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """``ms_lesions/synthetic_tiny`` built once per test session (seconds): its TFDS data_dir."""
    import tensorflow_datasets as tfds

    import tfds_ms  # noqa: F401  (registers ms_lesions)

    directory = tmp_path_factory.mktemp("tfds")
    tfds.builder("ms_lesions/synthetic_tiny", data_dir=str(directory)).download_and_prepare()
    return str(directory)


@pytest.fixture
def keep_noise_outside_the_brain():
    """``f(files, seed=0)``: rewrites skull-stripped NIfTI scans as raw scans keep them, with
    background noise (about 3 % of the brain's median intensity, folded at 0 as magnitude
    images are) wherever they were 0."""
    import nibabel as nib

    def rewrite(files, seed=0):
        rng = np.random.default_rng(seed)
        for path in files:
            scan = nib.load(path)
            data = np.asarray(scan.dataobj, np.float32)
            sigma = 0.03 * np.median(data[data > 0])
            noise = np.abs(rng.normal(0, sigma, data.shape)).astype(np.float32)
            nib.save(nib.Nifti1Image(np.where(data == 0, noise, data), scan.affine,
                                     scan.header), path)

    return rewrite


@pytest.fixture
def free_ports():
    """``free_ports(n)``: n TCP ports free on localhost now (for local multi-worker tests)."""
    import socket

    def pick(count):
        sockets = [socket.socket() for _ in range(count)]
        for s in sockets:
            s.bind(("localhost", 0))
        ports = [s.getsockname()[1] for s in sockets]
        for s in sockets:
            s.close()
        return ports

    return pick


@pytest.fixture
def ellipsoids():
    """``ellipsoids(rng, shape, count, radius=(0.8, 4.0))``: a bool mask of ``count`` random
    ellipsoidal lesions (semi-axes in voxels drawn from ``radius``), some touching each other
    or the array's edge: small, large and confluent lesions for the metric tests."""

    def make(rng, shape, count, radius=(0.8, 4.0)):
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
        mask = np.zeros(shape, bool)
        for _ in range(count):
            centre, radii = rng.uniform(0, shape), rng.uniform(*radius, 3)
            mask |= (((grid - centre) / radii) ** 2).sum(-1) <= 1
        return mask

    return make


@pytest.fixture
def lesion_pair(ellipsoids):
    """``lesion_pair(seed, shape, count=(2, 8), radius=(1.0, 4.0))``: a reference of random
    lesions and a plausible prediction: the reference shifted by up to a voxel, a tenth of
    its voxels dropped."""

    def make(seed, shape, count=(2, 8), radius=(1.0, 4.0)):
        rng = np.random.default_rng(seed)
        reference = ellipsoids(rng, shape, int(rng.integers(*count)), radius)
        prediction = np.roll(reference, tuple(rng.integers(-1, 2, 3)), axis=(0, 1, 2))
        return reference, prediction & (rng.random(shape) > 0.1)

    return make
