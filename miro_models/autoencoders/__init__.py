"""Built-in autoencoders: ``pixel`` (identity, [0,1] -> [-1,1]) and ``kl`` (diffusers AutoencoderKL)."""
