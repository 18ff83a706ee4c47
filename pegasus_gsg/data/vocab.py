"""The PEGASUS vocabulary layout (shared/GSG.md §4), shared by every part that touches token ids.

`google/pegasus-large` and the tokenizers this project trains use the same layout, so these
constants hold for both; code that loads a tokenizer still checks them (tokenizer.py).
"""

PAD_ID = 0
"""`<pad>`; also the decoder start token."""
EOS_ID = 1
"""`</s>`."""
MASK1_ID = 2
"""`<mask_1>` ([MASK1]): stands for one whole gap sentence."""
MASK2_ID = 3
"""`<mask_2>` ([MASK2]): BERT-style masked token."""
NUM_RESERVED = 103
"""Ids 2..104 are `<mask_1>`, `<mask_2>` and `<unk_2>`..`<unk_102>` as in pegasus-large."""
UNK_ID = 105
"""`<unk>`."""
FIRST_PIECE_ID = 106
"""Ordinary pieces start here; every id below is special."""
IGNORE_INDEX = -100
"""Label value that the losses skip (PyTorch's cross-entropy default): padding in `labels`,
unpicked positions in `mlm_labels`."""

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
MASK1_TOKEN = "<mask_1>"
MASK2_TOKEN = "<mask_2>"
UNK_TOKEN = "<unk>"
