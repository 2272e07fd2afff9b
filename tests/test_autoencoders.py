"""Autoencoders ``pixel`` and ``kl`` (tiny random diffusers AutoencoderKL saved and loaded back)."""

from __future__ import annotations

import pytest
import torch

from miro_core import ConfigError, MiroError, registry, structure, unstructure
from miro_core.testing import AutoencoderContract


def make_tiny_vae(path, scaling_factor: float = 0.5):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=scaling_factor)
    out = path / "vae"
    vae.save_pretrained(out)
    return out


def _images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- pixel --------------------------------------------------------------------------------------------------
class TestPixelContract(AutoencoderContract):
    autoencoder_name = "pixel"
    roundtrip_atol = 1e-6


def test_pixel_scaling():
    ae = registry("autoencoders").create("pixel", {})
    img = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(ae.encode(img).flatten(), torch.tensor([-1.0, -0.5, 1.0]))
    assert ae.latent_shape(48) == (3, 48, 48)
    assert ae.decode(torch.full((1, 3, 2, 2), 3.0)).max() == 1.0  # clamped


# -- kl -----------------------------------------------------------------------------------------------------
class TestKLContract(AutoencoderContract):
    autoencoder_name = "kl"

    def make_autoencoder(self, tmp_path):
        return registry("autoencoders").create("kl", {"model": str(make_tiny_vae(tmp_path))})


def test_kl_latent_shape_without_weights(tmp_path):
    ae = registry("autoencoders").create("kl", {"model": str(make_tiny_vae(tmp_path))})
    assert ae.latent_shape(32) == (4, 16, 16)
    assert ae._vae is None  # only config.json was read
    with pytest.raises(ConfigError, match="divisible"):
        ae.latent_shape(31)


def test_kl_parity_with_direct_vae_and_default_normalisation(tmp_path):
    from diffusers import AutoencoderKL

    path = make_tiny_vae(tmp_path, scaling_factor=0.5)
    ae = registry("autoencoders").create("kl", {"model": str(path)})
    imgs = _images()
    lat = ae.encode(imgs)
    vae = AutoencoderKL.from_pretrained(path).eval()
    with torch.no_grad():
        z = vae.encode(imgs * 2 - 1).latent_dist.mode()
        torch.testing.assert_close(lat, z * 0.5)  # (z - 0) / (1 / scaling_factor)
        ref = ((vae.decode(lat / 0.5).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(ae.decode(lat), ref)
    # mode is deterministic; sample differs from it (posterior std > 0)
    torch.testing.assert_close(ae.encode(imgs), lat)
    sampler = registry("autoencoders").create("kl", {"model": str(path), "posterior": "sample"})
    torch.manual_seed(1)
    assert (sampler.encode(imgs) - lat).abs().max() > 1e-4


def test_kl_fit_normalisation(tmp_path):
    path = make_tiny_vae(tmp_path)
    ae = registry("autoencoders").create("kl", {"model": str(path)})
    imgs = _images(6, seed=3)
    raw = ae.encode_raw(imgs)
    shift, scale = ae.fit_normalisation(raw)
    assert len(shift) == len(scale) == 4 and ae.config.shift == shift
    lat = ae.encode(imgs)
    per_channel = lat.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(4), atol=1e-4, rtol=0)
    # the fitted values live in the config: an autoencoder rebuilt from it normalises the same way
    again = registry("autoencoders").create("kl", unstructure(ae.config))
    torch.testing.assert_close(again.encode(imgs), lat)
    torch.testing.assert_close(again.decode(lat), ae.decode(lat))
    assert structure(unstructure(ae.config), type(ae).Config) == ae.config


def test_kl_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="both"):
        registry("autoencoders").create("kl", {"shift": [0.0, 0.0, 0.0, 0.0]})
    with pytest.raises(ConfigError, match="posterior"):
        registry("autoencoders").create("kl", {"posterior": "mean"})
    ae = registry("autoencoders").create("kl", {"model": str(make_tiny_vae(tmp_path)), "shift": [0.0] * 3,
                                               "scale": [1.0] * 3})
    with pytest.raises(ConfigError, match="4 values"):
        ae.setup("cpu")


def test_kl_missing_weights_errors(tmp_path):
    ae = registry("autoencoders").create("kl", {"model": str(tmp_path / "sdxl-vae-local")})
    with pytest.raises(MiroError, match="sdxl-vae-local"):
        ae.setup("cpu")
    ae = registry("autoencoders").create("kl", {"model": "miro-test/no-such-vae", "local_files_only": True})
    with pytest.raises(MiroError, match="huggingface-cli download miro-test/no-such-vae"):
        ae.latent_shape(256)
