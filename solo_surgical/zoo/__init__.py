"""Model zoo: public teacher sources checked by hash, key conversion, and model cards of our runs.

* :mod:`.manifest`: the packaged ``manifest.yaml`` (URLs, published hashes, licences, key mappings);
* :mod:`.fetch`: torch's cache directory, downloads (temporary name, hash, rename) and hash checks;
* :mod:`.convert`: any published layout -> torchvision-layout backbone state dict (teacher init);
* :mod:`.card`: ``solo-surgical export RUN_DIR``;
* :mod:`.commands`: the ``zoo`` and ``export`` sub-commands.

Only the manifest is imported here; the rest imports torch and is loaded on use.
"""
from .manifest import KeyMapping, Manifest, ZooSource, load_manifest

__all__ = ["KeyMapping", "Manifest", "ZooSource", "load_manifest"]
