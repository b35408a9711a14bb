"""``avbalance prepare``: turn a raw dataset into a prepared cache that trains fast.

Decoding uses PyAV (video frames and audio tracks of any container FFmpeg reads) and soundfile;
features follow the recipes in :mod:`.features`; :mod:`.runner` prepares clips in parallel worker
processes, resumably; :mod:`.cache` writes and reads the cache. The dataset-specific parts (raw
layout, labels, splits) live in ``avbalance.data.datasets``.
"""

from .cache import PreparedCache
from .features import AudioRecipe, make_recipe
from .plan import ClipTask, Failure, Listing, PrepareSettings, Source

__all__ = ["AudioRecipe", "ClipTask", "Failure", "Listing", "PrepareSettings", "PreparedCache", "Source", "make_recipe"]
