"""`prepare`: split, rank and tokenize a corpus once, in parallel, into a token store.

Per pretraining document (shared/GSG.md): `split_sentences`, `gsg.rank_sentences` with the
chosen strategy (the whole ranking and its scores are stored, so any gsr, mixed/stochastic
selection or mask probability can be drawn later without preparing again), and the token ids of
every sentence. Tokens come from encoding the *whole document* once (with character offsets)
and cutting the ids where the sentences end: a token belongs to the sentence holding its last
character. So the sentences concatenate to exactly the ids the tokenizer gives for the
document, and a word is never split differently because it starts a sentence. (The tokenizer
trained here never lets a piece cross a sentence end; for other tokenizers a piece that does
goes with the later sentence.) Per fine-tuning record: document ids and summary ids.

How the work is cut, and why runs are deterministic and resumable:

- Input rows (all input files in order, sources.py) are cut into chunks of `chunk_size` rows.
  A chunk's output depends only on its rows, so it is the same whichever process computes it
  (chunks.py).
- `--num-proc N` maps chunks over N processes (at most 2N chunks in flight), results in order.
- `--shard I/N` computes chunks k with k mod N == I (round robin, so shards get similar work
  even when the corpus is sorted by length).
- Finished chunks land in `OUT.partial/chunks/` (written through pegasus_gsg.files: temporary
  name, fsync, rename), next to `job.json`, the identity of the job (tokenizer and source
  fingerprints, options, chunk size, shard count) (workdir.py). A rerun of the same job skips
  finished chunks, so a run killed at any point (kill -9 included) resumes; a partial
  directory of a *different* job is discarded (single process) or refused (sharded: another
  shard may still be using it).
- When a shard finishes it writes `OUT.partial/done-I-of-N.json`; the shard that finds all N
  markers assembles every chunk in order into the store (assemble.py, store.StoreBuilder:
  temporary directory, fsync, rename to OUT) and removes OUT.partial (run.py). Nothing appears
  under OUT before that, and OUT is byte-identical (same checksum) whatever the number of
  processes, shards or interruptions. If two shards finish at the same moment, both may
  assemble; the first rename wins and the other, finding an identical store in place, stops.

Records that cannot be used are never dropped silently. Blank documents (or summaries) are
always skipped and counted (`empty`: pretraining needs at least one sentence). Malformed JSON,
a missing field or a non-string field stop the run with `FILE:LINE: reason`, or with
`skip_bad` are skipped and counted (`bad_json`, `missing_field`, `not_text`; invalid UTF-8
and a NUL byte count as `bad_json`); the manifest keeps the counts and the first few messages.
A damaged *file* (a truncated .gz/.bz2/.xz, a parquet footer that cannot be read) fails the
job even with `skip_bad`: the rows after the damage cannot be read (sources.py), and it is
found while the inputs are counted, before anything is written. Records outside `--split`
are counted as filtered; the manifest also counts the `split` values seen, and preparing a
corpus that mixes several splits without `--split` (test data in a training set) logs a
warning.

Store sets (`--engine ray`, or `--rows-per-shard N` with either engine; storesets.py): the unit
of work is a run of at most N rows of one input file (a whole small file, or a fixed slice of a
large one). Each unit becomes one shard store `OUT.partial/shards/NNNNN/` (`prepare_unit`,
units.py, the same function whichever engine runs it; its manifest, written last by
StoreBuilder, is its completion marker). `--engine local` runs the units in this process or a
pool of `--num-proc` processes; `--engine ray` runs them as Ray tasks (engines.py; `ray.init()`
starts a local instance; `--ray-address auto` or HOST:PORT joins a cluster whose nodes share
OUT's file system). A unit reads only its own rows and writes only its own shard, so a task
that dies (worker or node lost) is simply run again by Ray (`max_retries`) and produces the
same bytes; a driver that dies leaves finished shards in OUT.partial, which a rerun of the same
command skips. When every shard is there the driver writes `storeset.json` (store.py) and
renames OUT.partial to OUT. The same inputs and options give byte-identical shards, and so the
same set checksum, with either engine.

Modules, one idea each: options.py (PrepareConfig, parse_shard, PrepareResult), chunks.py
(rows -> arrays of one chunk), workdir.py (OUT.partial and resuming), assemble.py (chunks ->
one store), run.py (`prepare()`: one job, the single-store path), units.py (one store-set unit
-> one shard), engines.py (local processes or Ray), storesets.py (the store-set driver).
"""

from pegasus_gsg.data.preparation.options import (
    DEFAULT_ROWS_PER_SHARD,
    ENGINES,
    PrepareConfig,
    PrepareResult,
    parse_shard,
)
from pegasus_gsg.data.preparation.run import prepare
from pegasus_gsg.data.preparation.units import Unit, prepare_unit

__all__ = [
    "DEFAULT_ROWS_PER_SHARD",
    "ENGINES",
    "PrepareConfig",
    "PrepareResult",
    "Unit",
    "parse_shard",
    "prepare",
    "prepare_unit",
]
