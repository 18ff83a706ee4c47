"""pegasus-gsg: PEGASUS Gap Sentences Generation, from raw text to a served summarizer."""

__version__ = "0.1.0"
