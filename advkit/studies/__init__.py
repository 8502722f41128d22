"""Studies: many runs as one experiment — summaries over seeds (``advkit summarize``) and the grid driver
(``advkit study``)."""
