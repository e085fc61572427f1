"""skillops: keep a skills-matching embedding model getting better, safely and on a schedule."""

__version__ = "0.1.0"
