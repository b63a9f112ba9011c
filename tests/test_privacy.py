"""What of the source file's metadata may reach the output of a tool that removes things from photos.

A camera's MakerNote can hold a preview of the original, and a thumbnail (EXIF IFD1, Photoshop
image resources, XMP) is a small copy of it: either would keep the removed object in the file.
"""
import io
import struct

import numpy as np
import pytest
from PIL import ExifTags, Image, TiffImagePlugin, TiffTags

from moebius_edge import imageio

MAKE, MODEL, DATETIME, ORIENTATION = 0x010F, 0x0110, 0x0132, 0x0112
DATETIME_ORIGINAL, EXPOSURE_TIME, MAKERNOTE = 0x9003, 0x829A, 0x927C
GPS_LATITUDE_REF = 0x0001
SECRET = b"MAKERNOTE-PREVIEW-OF-THE-ORIGINAL"
OUTPUT_EXTENSIONS = [".jpg", ".png", ".webp", ".tif"]


def _pixels(h=40, w=60):
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 2] = 150
    return a


def _thumbnail() -> bytes:
    # A distinctive colour so its JPEG bytes cannot occur by chance in the output.
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (201, 13, 77)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _with_ifd1(exif: Image.Exif, thumbnail: bytes) -> bytes:
    """EXIF bytes whose IFD1 holds a JPEG thumbnail (Pillow's serialiser never writes IFD1)."""
    tiff = exif.tobytes()[6:]  # drop b"Exif\0\0"; IFD0 starts at offset 8
    e = "<" if tiff[:2] == b"II" else ">"
    count = struct.unpack_from(e + "H", tiff, 8)[0]
    next_ifd = 8 + 2 + 12 * count
    assert struct.unpack_from(e + "I", tiff, next_ifd)[0] == 0
    ifd1 = len(tiff) + len(tiff) % 2
    data = ifd1 + 2 + 3 * 12 + 4
    entries = [(0x0103, 3, struct.pack(e + "HH", 6, 0)),  # Compression: JPEG
               (0x0201, 4, struct.pack(e + "I", data)),  # JPEGInterchangeFormat
               (0x0202, 4, struct.pack(e + "I", len(thumbnail)))]  # JPEGInterchangeFormatLength
    block = struct.pack(e + "H", len(entries))
    block += b"".join(struct.pack(e + "HHI", tag, typ, 1) + value for tag, typ, value in entries)
    block += struct.pack(e + "I", 0)
    tiff = tiff[:next_ifd] + struct.pack(e + "I", ifd1) + tiff[next_ifd + 4:]
    return b"Exif\0\0" + tiff.ljust(ifd1, b"\0") + block + thumbnail


def _camera_exif(orientation=1) -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE], exif[MODEL], exif[DATETIME] = "TestCam", "TC-1", "2024:05:06 07:08:09"
    exif[ORIENTATION] = orientation
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[DATETIME_ORIGINAL] = "2024:05:06 07:08:09"
    sub[EXPOSURE_TIME] = TiffImagePlugin.IFDRational(1, 250)
    sub[MAKERNOTE] = SECRET * 20
    exif.get_ifd(ExifTags.IFD.GPSInfo)[GPS_LATITUDE_REF] = "N"
    return exif


def _camera_jpeg(path, thumbnail: bytes):
    Image.fromarray(_pixels()).save(path, quality=95, exif=_with_ifd1(_camera_exif(), thumbnail))
    assert thumbnail in path.read_bytes() and SECRET in path.read_bytes()


@pytest.mark.parametrize("ext", OUTPUT_EXTENSIONS)
def test_makernote_is_stripped(tmp_path, ext):
    _camera_jpeg(tmp_path / "cam.jpg", _thumbnail())
    photo = imageio.read_image(tmp_path / "cam.jpg")
    out = imageio.write_image(tmp_path / f"out{ext}", photo.rgb, exif=photo.exif)
    assert SECRET not in out.read_bytes()
    assert MAKERNOTE not in Image.open(out).getexif().get_ifd(ExifTags.IFD.Exif)


@pytest.mark.parametrize("route", ["read_image", "raw_exif"])
def test_thumbnail_is_stripped(tmp_path, route):
    thumbnail = _thumbnail()
    _camera_jpeg(tmp_path / "cam.jpg", thumbnail)
    photo = imageio.read_image(tmp_path / "cam.jpg")
    # raw_exif: a caller hands write_image the camera's EXIF block as it is in the file.
    exif = photo.exif if route == "read_image" else Image.open(tmp_path / "cam.jpg").info["exif"]
    out = imageio.write_image(tmp_path / "out.jpg", photo.rgb, exif=exif)
    assert thumbnail not in out.read_bytes()
    back = Image.open(out).getexif()
    assert back.get_ifd(ExifTags.IFD.IFD1) == {} and not {0x0201, 0x0202} & set(back)
    assert back[MAKE] == "TestCam" and ORIENTATION not in back


def test_photoshop_and_xmp_blocks_of_a_tiff_are_stripped(tmp_path):
    # A TIFF's own directory becomes the EXIF; Photoshop's image resources (tag 34377) carry a
    # thumbnail (resource 0x040C) and XMP (tag 700) can embed one too.
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[MAKE] = "TiffCam"
    tags[34377] = b"8BIM\x04\x0c\0\0" + b"PHOTOSHOP-THUMBNAIL"
    tags.tagtype[34377] = TiffTags.UNDEFINED
    tags[700] = b"<x:xmpmeta><xmpGImg:image>XMP-THUMBNAIL</xmpGImg:image></x:xmpmeta>"
    tags.tagtype[700] = TiffTags.BYTE
    tags[0x0201], tags[0x0202] = 1234, 56  # stale thumbnail pointers
    Image.fromarray(_pixels()).save(tmp_path / "src.tif", tiffinfo=tags)
    photo = imageio.read_image(tmp_path / "src.tif")
    for ext in (".jpg", ".tif"):
        out = imageio.write_image(tmp_path / f"out{ext}", photo.rgb, exif=photo.exif)
        data = out.read_bytes()
        assert b"PHOTOSHOP-THUMBNAIL" not in data and b"XMP-THUMBNAIL" not in data
        back = Image.open(out).getexif()
        assert back[MAKE] == "TiffCam" and not {0x0201, 0x0202} & set(back)


@pytest.mark.parametrize("ext", OUTPUT_EXTENSIONS)
def test_basic_exif_is_kept(tmp_path, ext):
    _camera_jpeg(tmp_path / "cam.jpg", _thumbnail())
    photo = imageio.read_image(tmp_path / "cam.jpg")
    out = imageio.write_image(tmp_path / f"out{ext}", photo.rgb, exif=photo.exif)
    back = Image.open(out).getexif()
    assert (back[MAKE], back[MODEL], back[DATETIME]) == ("TestCam", "TC-1", "2024:05:06 07:08:09")
    sub = back.get_ifd(ExifTags.IFD.Exif)
    assert sub[DATETIME_ORIGINAL] == "2024:05:06 07:08:09" and sub[EXPOSURE_TIME] == 1 / 250
    assert back.get_ifd(ExifTags.IFD.GPSInfo)[GPS_LATITUDE_REF] == "N"


def _srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("ext", OUTPUT_EXTENSIONS)
def test_strip_metadata_leaves_no_exif_or_icc(tmp_path, ext):
    src = tmp_path / "cam.jpg"
    Image.fromarray(_pixels()).save(src, quality=95, icc_profile=_srgb_icc(),
                                    exif=_with_ifd1(_camera_exif(orientation=6), _thumbnail()))
    photo = imageio.read_image(src, strip_metadata=True)
    assert photo.exif is None and photo.icc_profile is None
    assert photo.rgb.shape == (60, 40, 3)  # the orientation is still applied to the pixels
    out = imageio.write_image(tmp_path / f"out{ext}", photo.rgb, alpha=photo.alpha, exif=photo.exif,
                              icc_profile=photo.icc_profile)
    back = Image.open(out)
    assert "icc_profile" not in back.info and "exif" not in back.info
    assert not {MAKE, MODEL, DATETIME, ORIENTATION, 34665, 34853} & set(back.getexif())
    assert b"TestCam" not in out.read_bytes()
