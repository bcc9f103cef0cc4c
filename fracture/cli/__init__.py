"""The command line (``python -m fracture``): argparse lives here and only here."""
