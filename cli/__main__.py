"""``python -m benzarr_cli`` (what ``torchrun -m benzarr_cli train ...`` runs)."""

from benzarr_cli.main import main

main()
