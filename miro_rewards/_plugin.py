"""Built-in plugin of ``miro_rewards``: lists the modules whose ``@hookimpl`` functions register components.

Registered through the ``miro`` entry-point group exactly like a third-party plugin.
"""

miro_plugins = [
    "miro_rewards.aesthetic",
    "miro_rewards.hpsv2",
    "miro_rewards.pick",
    "miro_rewards.sciscore",
    "miro_rewards.openai_clip",
    "miro_rewards.download_cmd",
    "miro_rewards.image_reward",
    "miro_rewards.vqa",
    "miro_rewards.jina_clip",
    "miro_rewards.binning.quantile",
    "miro_rewards.binning.uniform",
    "miro_rewards.binning.refined_quantile",
]
