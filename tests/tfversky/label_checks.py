"""Checks that a transform moved a label map's values, not invented them (issue 20, item 2).

A transform is probed with a coordinate-coded image: channels 0-2 hold each voxel's own
(z, y, x) index and channel 3 holds 1. Transformed like the label, the image says, for each
output voxel, where in the source it was read (the ones channel: whether inside the source's
field of view at all). Linear interpolation reproduces a linear function exactly, so the
coordinates read are the sampling positions (held at the edge voxel over the outer half
voxel, as the edge rule says).
"""

import itertools

import numpy as np

IGNORE = 255  # nnU-Net's ignore label as the ms_lesions datasets store it
LABEL_VALUES = (1, 2, IGNORE)


def coded_volume(shape, rng):
    """(image (D, H, W, 4) float32 coordinates and ones, label (D, H, W) uint8): an ignore
    slab from one face, then ellipsoids of lesion classes 1 and 2 (some cutting into it)."""
    index = np.indices(shape).transpose(1, 2, 3, 0).astype(np.float32)
    image = np.concatenate([index, np.ones((*shape, 1), np.float32)], axis=-1)
    label = np.zeros(shape, np.uint8)
    axis = int(rng.integers(3))
    slab = [slice(None)] * 3
    slab[axis] = slice(0, int(rng.integers(1, shape[axis])))
    label[tuple(slab)] = IGNORE
    for value in (1, 2, 1):
        centre, radii = rng.uniform(0, shape), rng.uniform(1.5, 3.5, 3)
        label[(((index - centre) / radii) ** 2).sum(-1) <= 1] = value
    return image, label


def check_moved(image, label, source, spread=0):
    """Asserts that ``label`` is ``source`` moved as the coordinate-coded ``image`` says.

    For each output voxel, its neighbourhood is the source voxels around the position it
    was read from (the 2 per axis that interpolation uses, widened by ``spread`` voxels
    for a smoothing kernel's reach). Then:

    * no value outside the source's values and 0 appears;
    * outside the source's field of view, the label is 0;
    * a voxel whose neighbourhood holds one value has that value (alignment);
    * any voxel holds 0 or a value of its neighbourhood: so the ignored fraction lies
      between the fraction of voxels read wholly from ignored voxels and the fraction read
      partly from them (it moves only by interpolation at the ignored region's border).
    """
    image, label, source = (np.asarray(a) for a in (image, label, source))
    assert label.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= set(np.unique(source).tolist()) | {0}
    covered = image[..., 3] > 0.5
    assert not label[~covered].any(), "a value was read from outside the field of view"
    where, out = image[covered][:, :3], label[covered].astype(int)
    top = np.array(source.shape) - 1
    low = np.clip(np.floor(where - 1e-3) - spread, 0, top).astype(int)
    high = np.clip(np.floor(where + 1e-3) + 1 + spread, 0, top).astype(int)
    reach = range(3 + 2 * spread)
    around = np.stack([source[tuple(np.minimum(low + offset, high).T)]
                       for offset in itertools.product(reach, reach, reach)], axis=1)
    single = (around == around[:, :1]).all(1)
    np.testing.assert_array_equal(out[single], around[single, 0],
                                  "a voxel read from one value's interior lost that value")
    assert ((out[:, None] == around).any(1) | (out == 0)).all(), "a value moved too far"
    wholly, partly = ((around == IGNORE).all(1).mean(), (around == IGNORE).any(1).mean())
    ignored = (out == IGNORE).mean()
    assert wholly - 1e-9 <= ignored <= partly + 1e-9, (wholly, ignored, partly)
