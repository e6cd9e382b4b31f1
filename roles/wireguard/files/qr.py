"""Write a client config as a QR code PNG (for the WireGuard mobile apps): qr.py CONFIG PNG."""

import os
import sys

import qrcode
import qrcode.image.pure

config, png = sys.argv[1], sys.argv[2]
with open(config, encoding="utf-8") as f:
    text = f.read()
image = qrcode.make(text, image_factory=qrcode.image.pure.PyPNGImage)
tmp = png + ".tmp"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "wb") as out:
    image.save(out)
os.replace(tmp, png)
