"""Unit tests of glip_ros.ros.convert: every encoding, step padding, endianness and every error kind.

Pure numpy (plus Pillow for the compressed cases and sensor_msgs for the message wrapper); no node runs.
"""

from __future__ import annotations

import array
import io

import numpy as np
import pytest

from glip_ros.ros.convert import ImageConversionError, compressed_to_rgb, image_to_rgb, imgmsg_to_rgb

RNG = np.random.default_rng(0)
H, W = 5, 6
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _padded(rows: np.ndarray, pad: int) -> tuple[bytes, int]:
    """Append ``pad`` junk bytes to each row; return (data, step)."""
    rows = rows.reshape(rows.shape[0], -1)
    junk = np.full((rows.shape[0], pad), 0xAB, np.uint8)
    out = np.concatenate([rows, junk], axis=1)
    return out.tobytes(), out.shape[1]


@pytest.mark.parametrize("pad", [0, 5])
def test_rgb8_is_a_zero_copy_view_and_honours_step(pad: int) -> None:
    data, step = _padded(RGB, pad)
    buf = np.frombuffer(data, np.uint8)
    out = image_to_rgb(buf, H, W, "rgb8", step)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)
    assert np.shares_memory(out, buf)


@pytest.mark.parametrize("pad", [0, 3])
def test_bgr8(pad: int) -> None:
    data, step = _padded(RGB[:, :, ::-1].copy(), pad)
    buf = np.frombuffer(data, np.uint8)
    out = image_to_rgb(buf, H, W, "bgr8", step)
    np.testing.assert_array_equal(out, RGB)
    assert np.shares_memory(out, buf)
    np.testing.assert_array_equal(image_to_rgb(data, H, W, "8UC3", step), RGB)


@pytest.mark.parametrize("pad", [0, 4])
def test_rgba8_and_bgra8(pad: int) -> None:
    alpha = np.full((H, W, 1), 7, np.uint8)
    data, step = _padded(np.concatenate([RGB, alpha], axis=2), pad)
    np.testing.assert_array_equal(image_to_rgb(data, H, W, "rgba8", step), RGB)
    data, step = _padded(np.concatenate([RGB[:, :, ::-1], alpha], axis=2), pad)
    np.testing.assert_array_equal(image_to_rgb(data, H, W, "bgra8", step), RGB)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_broadcasts_to_three_channels(encoding: str) -> None:
    gray = RGB[:, :, 0]
    data, step = _padded(gray.copy(), 2)
    buf = np.frombuffer(data, np.uint8)
    out = image_to_rgb(buf, H, W, encoding, step)
    assert out.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    assert np.shares_memory(out, buf)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_full_range_scaling(bigendian: bool) -> None:
    vals = np.array([[0, 257, 257 * 128, 65535]], np.uint16)
    dt = ">u2" if bigendian else "<u2"
    data, step = _padded(vals.astype(dt).view(np.uint8), 2)
    out = image_to_rgb(data, 1, 4, "mono16", step, is_bigendian=bigendian)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


@pytest.mark.parametrize("bigendian", [False, True])
def test_16uc1_min_max_over_valid_pixels(bigendian: bool) -> None:
    vals = np.array([[0, 1000, 2000, 3000]], np.uint16)
    dt = ">u2" if bigendian else "<u2"
    out = image_to_rgb(vals.astype(dt).tobytes(), 1, 4, "16UC1", 8, is_bigendian=bigendian)
    np.testing.assert_array_equal(out[0, :, 1], [0, 0, 128, 255])


@pytest.mark.parametrize("bigendian", [False, True])
def test_32fc1_min_max_ignores_nan_and_inf(bigendian: bool) -> None:
    vals = np.array([[np.nan, 1.0, 2.0, 3.0, np.inf]], np.float32)
    dt = ">f4" if bigendian else "<f4"
    data, step = _padded(vals.astype(dt).view(np.uint8), 4)
    out = image_to_rgb(data, 1, 5, "32FC1", step, is_bigendian=bigendian)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 128, 255, 0])


def test_constant_depth_and_all_invalid_depth() -> None:
    out = image_to_rgb(np.full((2, 2), 5, "<u2").tobytes(), 2, 2, "16UC1", 4)
    assert (out == 255).all()
    out = image_to_rgb(np.full((2, 2), np.nan, "<f4").tobytes(), 2, 2, "32FC1", 8)
    assert (out == 0).all()


# BT.601 limited range: pure red is Y=81 U=90 V=240, pure white Y=235 U=V=128, black Y=16 U=V=128.
_YUV = {"red": (81, 90, 240), "white": (235, 128, 128), "black": (16, 128, 128)}
_RGB = {"red": (255, 0, 0), "white": (255, 255, 255), "black": (0, 0, 0)}


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_yuv422_variants(encoding: str) -> None:
    # 4 pixels = 2 macro-pixels (red red | white white); 4:2:2 shares U and V within a pair
    row = []
    for name in ("red", "white"):
        y, u, v = _YUV[name]
        row += [u, y, v, y] if encoding in ("yuv422", "uyvy") else [y, u, y, v]
    data, step = _padded(np.array([row, row], np.uint8), 4)  # two rows with 4 bytes of padding each
    out = image_to_rgb(data, 2, 4, encoding, step)
    assert out.shape == (2, 4, 3)
    for r in range(2):
        for c, name in enumerate(("red", "red", "white", "white")):
            np.testing.assert_allclose(out[r, c], _RGB[name], atol=3)


def test_yuv_gray_levels() -> None:
    row = [128, 235, 128, 16]  # UYVY: white and black sharing neutral chroma
    out = image_to_rgb(bytes(row), 1, 2, "uyvy", 4)
    np.testing.assert_allclose(out[0, 0], _RGB["white"], atol=1)
    np.testing.assert_allclose(out[0, 1], _RGB["black"], atol=1)


def test_encoding_names_are_case_insensitive() -> None:
    np.testing.assert_array_equal(image_to_rgb(RGB.tobytes(), H, W, "RGB8", W * 3), RGB)


def test_image_message_with_array_data() -> None:
    from sensor_msgs.msg import Image

    msg = Image(height=H, width=W, encoding="bgr8", step=W * 3 + 2, is_bigendian=0)
    data, _ = _padded(RGB[:, :, ::-1].copy(), 2)
    msg.data = array.array("B", data)
    np.testing.assert_array_equal(imgmsg_to_rgb(msg), RGB)


# ---- errors --------------------------------------------------------------------------------------


def _kind(fn, *args, **kwargs) -> str:
    with pytest.raises(ImageConversionError) as info:
        fn(*args, **kwargs)
    assert str(info.value)  # a readable message
    return info.value.kind


def test_unknown_encoding() -> None:
    assert _kind(image_to_rgb, RGB.tobytes(), H, W, "rgb9000", W * 3) == "unknown_encoding"
    assert _kind(image_to_rgb, RGB.tobytes(), H, W, "", W * 3) == "unknown_encoding"


def test_data_shorter_than_step_times_height() -> None:
    assert _kind(image_to_rgb, RGB.tobytes()[:-1], H, W, "rgb8", W * 3) == "short_data"
    assert _kind(image_to_rgb, RGB.tobytes(), H, W, "rgb8", W * 3 + 1) == "short_data"
    assert _kind(image_to_rgb, b"", H, W, "mono16", W * 2) == "short_data"


@pytest.mark.parametrize("h,w", [(0, W), (H, 0), (0, 0)])
def test_zero_width_or_height(h: int, w: int) -> None:
    assert _kind(image_to_rgb, b"", h, w, "rgb8", w * 3) == "zero_size"


def test_step_smaller_than_row() -> None:
    assert _kind(image_to_rgb, RGB.tobytes(), H, W, "rgb8", W * 3 - 1) == "bad_step"
    assert _kind(image_to_rgb, RGB.tobytes(), H, W, "32FC1", W * 4 - 4) == "bad_step"


def test_odd_width_yuv() -> None:
    assert _kind(image_to_rgb, bytes(12), 2, 3, "yuv422", 6) == "odd_width"


# ---- compressed ----------------------------------------------------------------------------------


def _encode(fmt: str, rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def test_png_roundtrip_is_exact() -> None:
    np.testing.assert_array_equal(compressed_to_rgb(_encode("PNG", RGB), "png"), RGB)


def test_jpeg_decodes_close_to_source() -> None:
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = 200
    smooth[..., 2] = 40
    out = compressed_to_rgb(array.array("B", _encode("JPEG", smooth)), "jpeg")
    assert out.shape == (32, 48, 3)
    assert np.abs(out.astype(int) - smooth).mean() < 4


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xd8\xff\xe0 this is not a jpeg", None],
    ids=["empty", "garbage", "truncated"],
)
def test_corrupt_compressed(data: bytes | None) -> None:
    if data is None:
        data = _encode("PNG", RGB)[:40]
    assert _kind(compressed_to_rgb, data, "jpeg") == "corrupt_compressed"


@pytest.mark.parametrize("side,match", [(9000, "declares 81000000 pixels"), (20000, "not decoded")])
def test_a_compressed_image_declaring_huge_dimensions_is_not_decoded(side: int, match: str) -> None:
    import struct
    import zlib

    png = bytearray(_encode("PNG", RGB))
    ihdr = bytearray(png[12:29])  # b"IHDR" + 13 bytes: width, height, depth, colour type, ...
    ihdr[4:12] = struct.pack(">II", side, side)  # 81 Mpx (243 MB decoded) / 400 Mpx (Pillow's bomb limit)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    with pytest.raises(ImageConversionError, match=match) as info:
        compressed_to_rgb(bytes(png), "png")
    assert info.value.kind == "unusable_size"
