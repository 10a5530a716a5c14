"""Orientation survives load -> augment -> write for 2D pictures.

The picture used everywhere: white in its left half, black in its right half, as a viewer shows
it (PIL / numpy ``array[row, column]``). MONAI's default picture reader loads ``(W, H)``; there a
"horizontal" flip moves white to the bottom and overlays come out transposed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


def _left_white(path, h: int, w: int, mode: str = "RGB") -> None:
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = 255
    Image.fromarray(a if mode == "RGB" else a[..., 0]).save(path)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_loaded_left_half_is_left(tmp_path, mode):
    from monai_ssl_ext.transforms import LoadPictured

    _left_white(tmp_path / "p.png", 20, 30, mode)
    x = LoadPictured("image")({"image": str(tmp_path / "p.png")})["image"]
    assert tuple(x.shape) == ((3 if mode == "RGB" else 1), 20, 30)  # (C, H, W)
    assert torch.all(x[..., :15] == 255) and torch.all(x[..., 15:] == 0)
    assert list(x.meta["spatial_shape"]) == [20, 30]


@pytest.mark.parametrize("augment", ["SimCLRAugment", "BYOLAugment"])
def test_horizontal_flip_moves_white_right(tmp_path, augment):
    """The views' flip is horizontal in the picture: white ends on the right."""
    import monai_ssl_ext.transforms as T

    _left_white(tmp_path / "p.png", 32, 32)
    x = T.LoadPictured("image")({"image": str(tmp_path / "p.png")})["image"][:1] / 255.0
    kwargs = dict(size=32, scale=(1.0, 1.0), hflip_prob=1.0, jitter_prob=0.0, mean=(0.0,), std=(1.0,))
    view = getattr(T, augment)(**kwargs)(x)  # full-image crop (scale 1, square), then the flip
    assert view.shape == (1, 32, 32)
    assert view[..., 20:].mean() > 0.9 and view[..., :12].mean() < 0.1, "white must move to the right"
    kwargs["hflip_prob"] = 0.0
    unflipped = getattr(T, augment)(**kwargs)(x)
    assert unflipped[..., :12].mean() > 0.9 and unflipped[..., 20:].mean() < 0.1


def test_overlay_matches_input_orientation(tmp_path):
    """A perfect 'model' (prediction = the white region) written as mask and overlay PNGs: the
    coloured pixels are where the input is white, in a non-square picture."""
    from monai_ssl_ext.handlers import OverlayWriter
    from monai_ssl_ext.transforms import LoadPictured

    h, w = 20, 30
    _left_white(tmp_path / "p.png", h, w)
    x = LoadPictured("image")({"image": str(tmp_path / "p.png")})["image"]
    fg = (x[0] > 128).long()
    pred = torch.stack([1 - fg, fg]).float()  # one-hot (2, H, W) with the image's metadata order
    mask_path, overlay_path = OverlayWriter(str(tmp_path / "out"), alpha=1.0, color=(0, 255, 0)).write(
        pred, str(tmp_path / "p.png"))
    mask = np.asarray(Image.open(mask_path))
    overlay = np.asarray(Image.open(overlay_path))
    assert mask.shape == (h, w)
    assert np.all(mask[:, :15] == 255) and np.all(mask[:, 15:] == 0)
    assert np.all(overlay[:, :15] == [0, 255, 0]) and np.all(overlay[:, 15:] == 0)


def test_uint8_loading_keeps_pixels_and_orientation_and_refuses_16_bit(tmp_path):
    """``dtype="uint8"`` (the SSL bundles' training path: crop in uint8, then float) gives the
    float loader's pixels and orientation, the uint8 view equals the view of the [0, 1] float
    picture up to the 8-bit rounding of the crop, and a 16-bit picture is refused by name."""
    import monai_ssl_ext.transforms as T

    _left_white(tmp_path / "p.png", 32, 32)
    as_float = T.LoadPictured("image")({"image": str(tmp_path / "p.png")})["image"]
    as_uint8 = T.LoadPictured("image", dtype="uint8")({"image": str(tmp_path / "p.png")})["image"]
    assert as_uint8.dtype == torch.uint8 and torch.equal(as_uint8.float(), as_float.as_tensor())
    kwargs = dict(size=16, scale=(1.0, 1.0), hflip_prob=1.0, jitter_prob=0.0, mean=(0.0,), std=(1.0,))
    torch.manual_seed(0)
    view8 = T.ViewAugment(**kwargs)(as_uint8)
    torch.manual_seed(0)
    viewf = T.ViewAugment(**kwargs)(as_float / 255.0)
    assert view8.dtype == torch.float32 and (view8 - viewf).abs().max() <= 1 / 255 + 1e-6
    assert view8[..., 10:].mean() > 0.9 and view8[..., :6].mean() < 0.1, "white must move to the right"

    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(T.ImageReadError, match="deep.png"):
        T.LoadPictured("image", dtype="uint8")({"image": str(tmp_path / "deep.png")})
    with pytest.raises(ValueError, match="dtype"):
        T.LoadPictured("image", dtype="int16")
    with pytest.raises(T.ImageReadError, match="one file path per key, not a list"):
        T.LoadPictured("image")({"image": [str(tmp_path / "p.png")] * 2})


def _pictures(tmp_path) -> list:
    """Non-square pictures of the modes a user's folder may hold, with distinct pixel values."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    made = {"rgb.jpg": Image.fromarray(rgb), "grey.png": Image.fromarray(rgb[..., 0]),
            "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"),
            "palette.png": Image.fromarray(rgb).convert("P"), "rgb.bmp": Image.fromarray(rgb),
            "rgb.tif": Image.fromarray(rgb), "deep.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)}
    for name, picture in made.items():
        picture.save(tmp_path / name)
    return [tmp_path / name for name in made]


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # the reference's own
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_load_pictured_gives_monai_loadimaged_pixels_and_metadata(tmp_path, dtype):
    """``LoadPictured`` reads pictures itself (no ``LoadImage`` dispatch): it must give what MONAI's
    ``LoadImaged`` with ``PILReader(reverse_indexing=False)`` and ``ensure_channel_first`` gives, the
    reference here, for every picture mode: values, dtype, channel-first layout, affine and the
    reader's metadata (MONAI's ``spatial_shape`` is ``(W, H)``, ours ``(H, W)`` as the array)."""
    from monai.data import PILReader
    from monai.transforms import LoadImaged

    from monai_ssl_ext.transforms import LoadPictured

    reference = LoadImaged("image", reader=PILReader(reverse_indexing=False), image_only=True,
                           dtype=np.float32 if dtype == "float32" else None, ensure_channel_first=True)
    ours = LoadPictured("image", dtype=dtype)
    for path in _pictures(tmp_path):
        if dtype == "uint8" and path.name == "deep.png":
            continue  # refused (test above)
        want = reference({"image": str(path)})["image"]
        got = ours({"image": path})["image"]
        assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride(), path.name
        assert torch.equal(got.as_tensor(), want.as_tensor()), path.name
        assert torch.equal(got.affine, want.affine), path.name
        assert got.meta["filename_or_obj"] == want.meta["filename_or_obj"] == str(path)
        assert list(got.meta["spatial_shape"]) == list(want.meta["spatial_shape"])[::-1] == list(got.shape[1:])
        for key in ("format", "mode", "width", "height"):
            assert got.meta[key] == want.meta[key], (path.name, key)
        np.testing.assert_equal(got.meta["original_channel_dim"], want.meta["original_channel_dim"])
