"""Data: the id layout, inputs, the tokenizer, the token store and its preparation, and the
examples, samplers and collators that feed training."""
