"""numpy <-> sensor_msgs conversions (no cv_bridge: ROS 2's is not on PyPI). ROS layer only."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import CompressedImage, Image


def to_image_msg(rgb: np.ndarray, header) -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8, row-major, step = 3 * width."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = 3 * msg.width
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def from_image_msg(msg: Image) -> np.ndarray:
    if msg.encoding != "rgb8":
        raise ValueError(f"expected rgb8, got {msg.encoding}")
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    return buf[:, : 3 * msg.width].reshape(msg.height, msg.width, 3)


def to_compressed_msg(rgb: np.ndarray, header, fmt: str = "png", jpeg_quality: int = 90) -> CompressedImage:
    import cv2
    ext = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg"}[fmt]
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext == ".jpg" else []
    ok, enc = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {fmt}")
    msg = CompressedImage()
    msg.header = header
    msg.format = "png" if ext == ".png" else "jpeg"
    msg.data = enc.tobytes()
    return msg
