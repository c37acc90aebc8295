"""Optional rigid registration of a scan to the MNI152 template, with SimpleITK.

The paper rigidly registers every subject to one reference. Without this step the builder
only removes translations (the grid is centred on each brain); with it
(``MsLesionsConfig(register=True)``), the grid is placed in the template's frame, so head
rotations are removed too and every subject lands in one common orientation.

SimpleITK is an optional dependency (``pip install SimpleITK``, or the ``registration``
extra); nothing else in the package needs it.
"""

from __future__ import annotations

import functools

import numpy as np

from tfversky import preprocessing

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # ITK's world is LPS, nibabel's RAS


def _sitk():
    try:
        import SimpleITK
    except ImportError as err:
        raise ImportError("Rigid registration (register=True) needs SimpleITK, an optional "
                          "dependency: pip install SimpleITK. Without it, build with "
                          "register=False (the default).") from err
    return SimpleITK


def _to_itk(sitk, volume: np.ndarray, affine: np.ndarray):
    """NumPy (X, Y, Z) volume with a RAS affine -> SimpleITK image in LPS."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0), np.float32))
    lps = _LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


@functools.lru_cache(maxsize=1)
def _template():
    """The MNI152 T1 (the phantom's anatomy) at 2 mm: fixed image and its brain centre."""
    from tfds_ms import synth

    anatomy = synth.load_anatomy(2.0)
    return anatomy.t1, anatomy.affine, preprocessing.brain_center(anatomy.t1, anatomy.affine)


def rigid_transform(moving: np.ndarray, moving_affine: np.ndarray, fixed: np.ndarray,
                    fixed_affine: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """The rigid world transform W (4x4, RAS mm) with moving(W x) ~ fixed(x).

    Mattes mutual information (works across contrasts and intensity scales), a three-level
    pyramid (4x, 2x, 1x shrink), regular-step gradient descent on a 3D Euler transform
    initialised by aligning the images' centres of mass.

    Args:
        moving, moving_affine: the scan to align (e.g. a subject's T1) and its affine.
        fixed, fixed_affine: the reference (e.g. the MNI152 T1) and its affine.
        seed: seed of the metric's random voxel sampling. Defaults to 0.
    """
    sitk = _sitk()
    fixed_image = _to_itk(sitk, fixed, fixed_affine)
    moving_image = _to_itk(sitk, moving, moving_affine)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                    numberOfIterations=200)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(sitk.CenteredTransformInitializer(
        fixed_image, moving_image, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS), inPlace=False)
    transform = method.Execute(fixed_image, moving_image)
    # Read the (composite) result back as a matrix by mapping points: exact for a rigid map.
    points = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], float)
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in points])
    lps = np.eye(4)
    lps[:3, :3] = (mapped[1:] - mapped[0]).T / 100
    lps[:3, 3] = mapped[0]
    return _LPS @ lps @ _LPS


def registered_grid_affine(t1: np.ndarray, affine: np.ndarray,
                           grid: preprocessing.ReferenceGrid, *, seed: int = 0) -> np.ndarray:
    """Grid affine (scan's world coordinates) of ``grid`` placed on the MNI152 brain.

    Registers the scan's T1 to the template and maps the template-frame grid into the
    scan's world: give the result to ``tfversky.preprocessing.prepare_volume(...,
    grid_affine=...)``; ``to_native`` maps predictions back as usual.
    """
    template, template_affine, center = _template()
    world = rigid_transform(t1, affine, template, template_affine, seed=seed)
    return world @ grid.affine(center)
