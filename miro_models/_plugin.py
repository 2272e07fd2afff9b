"""Built-in plugin of ``miro_models``: lists the modules whose ``@hookimpl`` functions register components.

Registered through the ``miro`` entry-point group exactly like a third-party plugin.
"""

miro_plugins = [
    "miro_models.guidance.multi_reward_cfg",
    "miro_models.guidance.multi_reward_cfg_text_drop",
    "miro_models.guidance.none",
    "miro_models.backbones.rin",
    "miro_models.backbones.dit",
    "miro_models.backbones.unet",
    "miro_models.text_encoders.minilm",
    "miro_models.text_encoders.t5",
    "miro_models.text_encoders.clip",
    "miro_models.autoencoders.pixel",
    "miro_models.autoencoders.kl",
]
