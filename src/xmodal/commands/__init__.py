"""CLI verbs, one module per group; see xmodal/cli.py."""
