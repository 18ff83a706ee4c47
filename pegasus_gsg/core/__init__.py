"""GSG core: text in, sentence indices out (shared/GSG.md §1-3). Pure Python and numpy, no I/O."""
