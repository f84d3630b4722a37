"""``python -m music_attn`` runs the command line."""

from music_attn.cli import main

raise SystemExit(main())
