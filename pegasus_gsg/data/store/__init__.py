"""The token store: what `prepare` writes once and every training epoch reads.

A store is a directory of flat `.npy` arrays (token ids, record and sentence offsets, the GSG
ranking or the document/summary split) plus `manifest.json`, written last. The arrays are
memory-mapped on open, so reading record i is a few offset look-ups and views, and DataLoader
workers share one copy of the pages. Every integer array uses the narrowest dtype that holds
its values, and vocabularies just over 65,536 ids keep 2 bytes per token (`split17`).

- format.py: the on-disk format in one place (files per kind, dtypes, token codec, manifest
  keys, checksums).
- builder.py: `StoreBuilder` writes a store complete or not at all (staging directory, manifest
  last, renamed into place).
- reader.py: `TokenStore` reads one (`TokenStore.open`), `read_manifest` and `verify_store`
  check it (`pegasus-gsg verify DIR`).
- storeset.py: `StoreSet` reads a directory of shard stores as one store.
"""

from pegasus_gsg.data.store.builder import StoreBuilder
from pegasus_gsg.data.store.format import (
    FORMAT,
    FORMAT_VERSION,
    HIGH_BIT,
    KINDS,
    MANIFEST,
    SET_FORMAT,
    SET_FORMAT_VERSION,
    SET_MANIFEST,
    narrowest_uint,
    offsets_dtype,
    split17_decode,
    token_codec,
    token_dtype,
)
from pegasus_gsg.data.store.reader import TokenStore, read_manifest, verify_store
from pegasus_gsg.data.store.storeset import (
    StoreSet,
    read_set_manifest,
    set_checksum,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HIGH_BIT",
    "KINDS",
    "MANIFEST",
    "SET_FORMAT",
    "SET_FORMAT_VERSION",
    "SET_MANIFEST",
    "StoreBuilder",
    "StoreSet",
    "TokenStore",
    "narrowest_uint",
    "offsets_dtype",
    "read_manifest",
    "read_set_manifest",
    "set_checksum",
    "split17_decode",
    "token_codec",
    "token_dtype",
    "verify_store",
]
