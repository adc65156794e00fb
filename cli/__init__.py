"""benzarr command-line interface (import name ``benzarr_cli``)."""
