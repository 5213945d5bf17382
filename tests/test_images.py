"""Safe decoding: every mode, orientation, bombs, corrupt files, junk."""

import io

import numpy as np
import pytest
from PIL import Image

from resnetlab.data.images import ImageDecodeError, image_to_uint8, is_junk, open_image


def _save(tmp_path, img, name, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


def test_rgb_and_l_pass_through(tmp_path):
    p = _save(tmp_path, Image.new("RGB", (5, 4), (10, 20, 30)), "a.png")
    img = open_image(p)
    assert img.mode == "RGB" and img.size == (5, 4) and img.getpixel((0, 0)) == (10, 20, 30)
    assert open_image(p, channels=1).mode == "L"
    g = _save(tmp_path, Image.new("L", (3, 3), 77), "g.png")
    assert open_image(g).getpixel((1, 1)) == (77, 77, 77)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    img = open_image(_save(tmp_path, rgba, "t.png"))
    assert img.getpixel((1, 1)) == (255, 255, 255)  # transparent -> background, not red
    assert img.getpixel((0, 0)) == (0, 0, 255)
    la = Image.new("LA", (2, 2), (0, 0))
    assert open_image(_save(tmp_path, la, "la.png"), channels=1).getpixel((0, 0)) == 255


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 255, 0] + [255, 0, 0] * 255)
    p.putpixel((0, 0), 1)
    path = _save(tmp_path, p, "p.png", transparency=0)
    img = open_image(path)
    assert img.getpixel((1, 1)) == (255, 255, 255)
    assert img.getpixel((0, 0)) == (255, 0, 0)
    plain = _save(tmp_path, p, "p.gif")
    assert open_image(plain).getpixel((0, 0)) == (255, 0, 0)


def test_cmyk_and_one_bit(tmp_path):
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # red
    assert open_image(_save(tmp_path, cmyk, "c.jpg")).getpixel((1, 1))[0] > 200
    bw = Image.new("1", (3, 3), 1)
    assert open_image(_save(tmp_path, bw, "b.png")).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_is_scaled_not_saturated(tmp_path):
    a = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    p = _save(tmp_path, Image.fromarray(a), "d.png")
    out = np.asarray(open_image(p, channels=1))
    assert out.tolist() == [[0, 4, 128, 255]]  # not 0/255/255/255 as a clip would give


def test_32_bit_int_and_float(tmp_path):
    i = Image.fromarray(np.array([[0, 500, 1000]], dtype=np.int32))
    out = np.asarray(open_image(_save(tmp_path, i, "i.tif"), channels=1))
    assert out[0, 0] == 0 and out[0, 2] > out[0, 1] > 0 and out[0, 2] < 255
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    out = np.asarray(open_image(_save(tmp_path, f, "f.tif"), channels=1))
    assert out.tolist() == [[0, 128, 255]]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    p = _save(tmp_path, img, "phone.jpg", exif=exif.tobytes())
    assert open_image(p).size == (10, 30)


def test_bad_files_named_with_reason(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.jpg: empty file"):
        open_image(empty)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, "JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="trunc.jpg: corrupt image: truncated"):
        open_image(trunc)
    txt = tmp_path / "notes.png"
    txt.write_text("hello")
    with pytest.raises(ImageDecodeError, match="not an image"):
        open_image(txt)
    with pytest.raises(ImageDecodeError, match="cannot read"):
        open_image(tmp_path / "missing.png")


def test_eps_and_pdf_refused(tmp_path):
    eps = tmp_path / "x.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageDecodeError, match="not an image in a supported format"):
        open_image(eps)
    with pytest.raises(ImageDecodeError):
        open_image(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")


def test_decompression_bomb_refused_before_decoding(tmp_path):
    p = _save(tmp_path, Image.new("L", (200, 200)), "big.png")
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        open_image(p, max_pixels=10_000)
    # A header claiming a huge size is refused by the default limit too.
    huge = Image.new("1", (20000, 20000))
    p = _save(tmp_path, huge, "huge.png")
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        open_image(p)


def test_bytes_input_and_tensor():
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (1, 2, 3)).save(buf, "PNG")
    t = image_to_uint8(open_image(buf.getvalue()))
    assert t.shape == (3, 3, 4) and t[:, 0, 0].tolist() == [1, 2, 3]
    assert image_to_uint8(open_image(buf.getvalue(), channels=1)).shape == (1, 3, 4)


@pytest.mark.parametrize(
    "path, junk",
    [
        ("cats/._img.jpg", True),
        ("__MACOSX/cats/a.jpg", True),
        ("cats/.DS_Store", True),
        ("cats/Thumbs.db", True),
        (".hidden/a.jpg", True),
        ("cats/a.jpg", False),
        ("猫/照片 1.jpg", False),
    ],
)
def test_junk_detection(path, junk):
    assert is_junk(path) is junk


def test_jpeg_draft_keeps_both_sides_above_min_side(tmp_path):
    p = _save(tmp_path, Image.new("RGB", (1600, 1200), (10, 200, 30)), "big.jpg", quality=90)
    img = open_image(p, min_side=256)
    assert img.size == (400, 300)  # decoded at 1/4 scale: both sides still >= 256
    assert open_image(p, min_side=700).size == (1600, 1200)  # 1/2 would give 600 < 700
    assert img.getpixel((10, 10))[1] > 180
