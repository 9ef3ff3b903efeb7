"""Language models: the built-in offline model served locally (``local.py``); providers join here."""
