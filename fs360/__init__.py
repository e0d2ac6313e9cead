"""fs360: a FUSE filesystem that uploads what is written into it to 360-for-you.com."""

__version__ = "0.1.0"
