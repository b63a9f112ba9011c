"""Reading photos and masks as displayed, writing results with their metadata."""
import numpy as np
import pytest
from PIL import Image

from moebius_edge import imageio
from moebius_edge.errors import UserError

ORIENTATION = 0x0112
MAKE = 0x010F


def _photo(h=40, w=60):
    """A photo whose top-left corner is marked, so rotations are visible."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 1] = 90
    a[:10, :10] = (250, 20, 20)
    return a


def _save_rotated_jpeg(path, upright):
    # Store the pixels rotated so that EXIF orientation 6 (rotate 90° CW to display) shows them upright.
    stored = np.rot90(upright, k=1)  # counter-clockwise
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[MAKE] = "TestCam"
    Image.fromarray(stored).save(path, quality=98, exif=exif.tobytes())


def test_exif_rotated_jpeg_is_read_upright(tmp_path):
    up = _photo()
    _save_rotated_jpeg(tmp_path / "p.jpg", up)
    photo = imageio.read_image(tmp_path / "p.jpg")
    assert photo.rgb.shape == up.shape
    assert photo.rgb[:10, :10, 0].mean() > 200 and photo.rgb[-10:, -10:, 0].mean() < 50
    exif = Image.Exif()
    exif.load(photo.exif)
    assert ORIENTATION not in exif and exif[MAKE] == "TestCam"
    assert photo.format == "JPEG"


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".tif"])
def test_written_files_keep_exif_without_orientation(tmp_path, ext):
    up = _photo()
    _save_rotated_jpeg(tmp_path / "p.jpg", up)
    photo = imageio.read_image(tmp_path / "p.jpg")
    out = imageio.write_image(tmp_path / f"o{ext}", photo.rgb, exif=photo.exif)
    back = Image.open(out)
    assert back.size == (up.shape[1], up.shape[0])
    exif = back.getexif()
    assert exif.get(MAKE) == "TestCam" and ORIENTATION not in exif
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rgba_keeps_alpha_where_the_format_can(tmp_path):
    a = np.zeros((20, 30, 4), np.uint8)
    a[..., 0] = 200
    a[..., 3] = np.linspace(0, 255, 30).astype(np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    photo = imageio.read_image(tmp_path / "a.png")
    assert photo.rgb.shape == (20, 30, 3) and np.array_equal(photo.alpha, a[..., 3])
    assert np.array_equal(photo.rgb[..., 0], a[..., 0])
    imageio.write_image(tmp_path / "o.png", photo.rgb, alpha=photo.alpha)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), a)
    imageio.write_image(tmp_path / "o.jpg", photo.rgb, alpha=photo.alpha)
    assert Image.open(tmp_path / "o.jpg").mode == "RGB"


def test_16_bit_png(tmp_path):
    import cv2

    g = (np.arange(20 * 30, dtype=np.uint32).reshape(20, 30) * 100).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g)
    photo = imageio.read_image(tmp_path / "g16.png")
    assert photo.rgb.dtype == np.uint8 and photo.rgb.shape == (20, 30, 3)
    np.testing.assert_allclose(photo.rgb[..., 0], g / 257.0, atol=0.5)
    rgb16 = np.stack([g, g // 2, 65535 - g], axis=-1)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    photo = imageio.read_image(tmp_path / "c16.png")
    np.testing.assert_allclose(photo.rgb.astype(float), rgb16 / 257.0, atol=1.0)


def test_grayscale_and_palette(tmp_path):
    g = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (10, 1))
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    photo = imageio.read_image(tmp_path / "g.png")
    assert np.array_equal(photo.rgb, np.repeat(g[..., None], 3, 2)) and photo.alpha is None
    p = Image.fromarray(_photo()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    p.save(tmp_path / "p.png")
    assert imageio.read_image(tmp_path / "p.png").rgb.shape == (40, 60, 3)
    p.info["transparency"] = 0
    p.save(tmp_path / "pt.png", transparency=0)
    assert imageio.read_image(tmp_path / "pt.png").alpha is not None


def test_mask_channels(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 5:10] = 255
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere: luminance alone says "all hole"
    rgba[..., 3] = m
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(imageio.read_mask(tmp_path / "a.png", (30, 20)), m)
    assert imageio.read_mask(tmp_path / "a.png", (30, 20), channel="luminance").min() == 255
    Image.fromarray(m).save(tmp_path / "l.png")
    assert np.array_equal(imageio.read_mask(tmp_path / "l.png", (30, 20)), m)
    assert np.array_equal(imageio.read_mask(tmp_path / "l.png", (30, 20), invert=True), 255 - m)
    with pytest.raises(UserError, match="no alpha"):
        imageio.read_mask(tmp_path / "l.png", (30, 20), channel="alpha")
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[m > 0] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(imageio.read_mask(tmp_path / "rgb.png", (30, 20)), m)


def test_mask_of_another_resolution(tmp_path):
    m = np.zeros((10, 15), np.uint8)
    m[2:4, 3:6] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    big = imageio.read_mask(tmp_path / "m.png", (30, 20))
    assert big.shape == (20, 30) and np.array_equal(big[::2, ::2], m)
    imageio.read_mask(tmp_path / "m.png", (1505, 1000))  # 0.33 % off: accepted
    with pytest.raises(UserError, match="aspect"):
        imageio.read_mask(tmp_path / "m.png", (20, 30))


def test_mask_is_read_in_its_displayed_orientation(tmp_path):
    up = np.zeros((40, 60), np.uint8)
    up[:10, :10] = 255
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.rot90(up, 1)).save(tmp_path / "m.png", exif=exif.tobytes())
    assert np.array_equal(imageio.read_mask(tmp_path / "m.png", (60, 40)), up)


def test_binarize_threshold_and_dilate():
    m = np.array([[0, 100, 127, 128, 200, 255]], np.uint8)
    assert imageio.binarize(m).tolist() == [[0, 0, 0, 255, 255, 255]]
    d = np.zeros((11, 11), np.uint8)
    d[5, 5] = 255
    g = imageio.dilate(d, 3)
    assert g[5, 2] == g[2, 5] == 255 and g[5, 1] == 0 and g[0, 0] == 0
    assert imageio.dilate(d, 0) is d


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        imageio.read_image(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not a JPEG")
    with pytest.raises(UserError, match="cannot read image"):
        imageio.read_image(tmp_path / "junk.jpg")
    Image.fromarray(_photo()).save(tmp_path / "t.jpg")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "t.jpg").read_bytes()[:200])
    with pytest.raises(UserError, match="image"):
        imageio.read_image(tmp_path / "trunc.jpg")
    with pytest.raises(UserError, match="folder"):
        imageio.read_image(tmp_path)


def test_max_pixels_is_checked_before_decoding(tmp_path, monkeypatch):
    Image.fromarray(_photo(100, 100)).save(tmp_path / "p.png")
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a too-large image"))
    with pytest.raises(UserError, match="max-pixels"):
        imageio.read_image(tmp_path / "p.png", max_pixels=9_999)
    with pytest.raises(UserError, match="max-pixels"):
        imageio.read_mask(tmp_path / "p.png", (100, 100), max_pixels=9_999)


def test_output_format_and_atomic_write(tmp_path):
    with pytest.raises(UserError, match="unknown image extension"):
        imageio.output_format(tmp_path / "x.gif")
    with pytest.raises(UserError, match="does not exist"):
        imageio.write_image(tmp_path / "nope" / "x.png", _photo())
    # A failing encoder leaves neither the target nor a temporary file.
    with pytest.raises(Exception):
        imageio.write_image(tmp_path / "x.jpg", _photo(), quality="bad")
    assert list(tmp_path.iterdir()) == []
    src = tmp_path / "a.png"
    Image.fromarray(_photo()).save(src)
    imageio.copy_file(src, tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes() == src.read_bytes()
