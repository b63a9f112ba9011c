"""Reading photos and masks as displayed, writing results with their metadata."""
import logging
import struct

import numpy as np
import pytest
from PIL import ExifTags, Image

from moebius_edge import imageio
from moebius_edge.errors import UserError

ORIENTATION = 0x0112
MAKE = 0x010F
EXIF_IMAGE_WIDTH, EXIF_IMAGE_HEIGHT = 0xA002, 0xA003


@pytest.fixture
def logs(caplog, monkeypatch):
    # cli.main(), run in-process by other tests, stops "moebius_edge" propagating to caplog.
    monkeypatch.setattr(logging.getLogger("moebius_edge"), "propagate", True)
    caplog.set_level(logging.INFO, logger="moebius_edge.imageio")
    return caplog


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


def test_pixel_dimension_tags_describe_the_upright_output(tmp_path):
    up = _photo()  # 60 wide, 40 high as displayed
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif.get_ifd(ExifTags.IFD.Exif).update({EXIF_IMAGE_WIDTH: 40, EXIF_IMAGE_HEIGHT: 60})  # as stored
    Image.fromarray(np.rot90(up, k=1)).save(tmp_path / "p.jpg", quality=98, exif=exif.tobytes())
    photo = imageio.read_image(tmp_path / "p.jpg")
    parsed = Image.Exif()
    parsed.load(photo.exif)
    sub = parsed.get_ifd(ExifTags.IFD.Exif)
    assert (sub[EXIF_IMAGE_WIDTH], sub[EXIF_IMAGE_HEIGHT]) == (60, 40)
    out = imageio.write_image(tmp_path / "o.jpg", photo.rgb, exif=photo.exif)
    sub = Image.open(out).getexif().get_ifd(ExifTags.IFD.Exif)
    assert (sub[EXIF_IMAGE_WIDTH], sub[EXIF_IMAGE_HEIGHT]) == (60, 40)
    # Whatever the caller writes, the tags describe the written pixels.
    out = imageio.write_image(tmp_path / "crop.png", photo.rgb[:20, :30].copy(), exif=photo.exif)
    sub = Image.open(out).getexif().get_ifd(ExifTags.IFD.Exif)
    assert (sub[EXIF_IMAGE_WIDTH], sub[EXIF_IMAGE_HEIGHT]) == (30, 20)


def _gray_icc(gamma: float) -> bytes:
    """A minimal ICC v2 grey display profile (ICC.1:2001-04): white point and one gamma curve."""
    def s15(x):
        return struct.pack(">i", round(x * 65536))

    d50 = s15(0.9642) + s15(1.0) + s15(0.8249)
    tags = [(b"wtpt", b"XYZ \0\0\0\0" + d50),
            (b"kTRC", b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + struct.pack(">I", 0x02100000)
              + b"mntrGRAYXYZ " + bytes(12) + b"acsp" + bytes(24) + bytes(4) + d50 + bytes(48))
    return header + table + body


def _srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _icc_space(path):
    icc = Image.open(path).info.get("icc_profile")
    return icc[16:20] if icc else None


@pytest.mark.parametrize("src", ["g.png", "g.tif"])
def test_icc_of_a_grey_source_is_not_attached_to_the_rgb_output(tmp_path, src, logs):
    g = np.array([[0, 64, 128, 255]], np.uint8).repeat(4, axis=0)
    Image.fromarray(g, "L").save(tmp_path / src, icc_profile=_gray_icc(1.0))
    photo = imageio.read_image(tmp_path / src)
    assert photo.icc_profile is None or photo.icc_profile[16:20] == b"RGB "
    assert "ICC" in logs.text
    try:
        from PIL import ImageCms  # noqa: F401  (with LittleCMS the pixels are converted to sRGB)
    except ImportError:
        pass
    else:
        assert abs(int(photo.rgb[0, 2, 0]) - 188) <= 2  # linear 0.5 is sRGB 188
        assert "sRGB" in logs.text
    for ext in (".png", ".jpg", ".tif"):
        out = imageio.write_image(tmp_path / f"o{ext}", photo.rgb, exif=photo.exif,
                                  icc_profile=photo.icc_profile)
        assert _icc_space(out) in (None, b"RGB ")
        assert 34675 not in Image.open(out).getexif()  # nor inside the EXIF of a TIFF source


def test_icc_of_a_cmyk_source_is_not_attached_to_the_rgb_output(tmp_path, logs):
    srgb = _srgb_icc()
    cmyk_labelled = srgb[:16] + b"CMYK" + srgb[20:]  # a profile LittleCMS cannot apply
    Image.new("CMYK", (8, 6), (0, 200, 0, 0)).save(tmp_path / "c.jpg", icc_profile=cmyk_labelled)
    photo = imageio.read_image(tmp_path / "c.jpg")
    assert photo.icc_profile is None and photo.rgb.shape == (6, 8, 3)
    assert "ICC" in logs.text and logs.records[-1].levelno == logging.WARNING
    out = imageio.write_image(tmp_path / "o.jpg", photo.rgb, icc_profile=photo.icc_profile)
    assert _icc_space(out) is None


@pytest.mark.parametrize("src", ["p.jpg", "p.png", "p.tif"])
def test_icc_of_an_rgb_source_is_kept(tmp_path, src):
    srgb = _srgb_icc()
    Image.fromarray(_photo()).save(tmp_path / src, icc_profile=srgb)
    photo = imageio.read_image(tmp_path / src)
    assert photo.icc_profile == srgb
    out = imageio.write_image(tmp_path / "o.jpg", photo.rgb, icc_profile=photo.icc_profile)
    assert Image.open(out).info["icc_profile"] == srgb


def _raw_exif(entries, tail=b""):
    """A little-endian EXIF block with one IFD of (tag, type, count, 4 value bytes) entries."""
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHI", tag, typ, n) + value for tag, typ, n, value in entries)
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + tail


CORRUPT_EXIF = {  # name: (EXIF block, stored rotated for orientation 6, Make that survives)
    # Orientation 6 and an Exif IFD pointer with a negative offset: the rotation can still be read.
    "negative_exif_pointer": (_raw_exif([(ORIENTATION, 3, 1, struct.pack("<HH", 6, 0)),
                                         (0x8769, 9, 1, struct.pack("<i", -5))]), True, None),
    "orientation_as_text": (_raw_exif([(MAKE, 2, 4, b"Cam\0"), (ORIENTATION, 2, 2, b"6\0\0\0")]),
                            False, "Cam"),
    "not_a_tiff_header": (b"Exif\0\0XX*\0\0\0\0\x08" + bytes(20), False, None),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_EXIF))
def test_corrupt_exif_loads_with_a_warning(tmp_path, case, logs):
    raw, rotated, make = CORRUPT_EXIF[case]
    up = _photo()
    Image.fromarray(np.rot90(up, k=1) if rotated else up).save(tmp_path / "p.jpg", quality=98, exif=raw)
    photo = imageio.read_image(tmp_path / "p.jpg")
    assert photo.rgb.shape == up.shape and photo.rgb[:10, :10, 0].mean() > 200
    assert any(r.levelno == logging.WARNING and "EXIF" in r.getMessage() for r in logs.records)
    out = imageio.write_image(tmp_path / "o.jpg", photo.rgb, exif=photo.exif)
    assert Image.open(out).getexif().get(MAKE) == make and ORIENTATION not in Image.open(out).getexif()
    Image.fromarray(np.rot90(up[..., 0], k=1) if rotated else up[..., 0]).save(tmp_path / "m.png", exif=raw)
    assert imageio.read_mask(tmp_path / "m.png", (60, 40)).shape == (40, 60)
    # write_image given the raw block writes the image without what it cannot read.
    out = imageio.write_image(tmp_path / "raw.jpg", up, exif=raw)
    assert Image.open(out).getexif().get(MAKE) == make and ORIENTATION not in Image.open(out).getexif()


def test_exif_over_64_kb_is_trimmed_for_jpeg(tmp_path, logs):
    exif = Image.Exif()
    exif[MAKE] = "TestCam"
    exif[0x010E] = "x" * 70_000  # ImageDescription: more than a JPEG APP1 segment holds
    Image.fromarray(_photo()).save(tmp_path / "p.png", exif=exif.tobytes())
    photo = imageio.read_image(tmp_path / "p.png")
    assert len(photo.exif) > 65_535
    out = imageio.write_image(tmp_path / "o.jpg", photo.rgb, exif=photo.exif)
    back = Image.open(out).getexif()
    assert back[MAKE] == "TestCam" and 0x010E not in back
    assert "ImageDescription" in logs.text
    out = imageio.write_image(tmp_path / "o.png", photo.rgb, exif=photo.exif)  # PNG holds it all
    assert len(Image.open(out).getexif()[0x010E]) == 70_000


def test_conversions_to_8_bit_rgb_are_logged(tmp_path, logs):
    import cv2

    g = (np.arange(20 * 30, dtype=np.uint32).reshape(20, 30) * 100).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g)
    cv2.imwrite(str(tmp_path / "c16.png"), np.stack([g, g, g], axis=-1))
    Image.fromarray((g // 257).astype(np.uint8), "L").save(tmp_path / "g8.png")
    Image.fromarray(_photo()).save(tmp_path / "rgb.png")
    for name, words in [("g16.png", ("16-bit", "grey")), ("c16.png", ("16-bit",)), ("g8.png", ("grey",))]:
        logs.clear()
        imageio.read_image(tmp_path / name)
        assert len(logs.records) == 1 and all(w in logs.text for w in words) and name in logs.text
    logs.clear()
    imageio.read_image(tmp_path / "rgb.png")
    assert logs.records == []
