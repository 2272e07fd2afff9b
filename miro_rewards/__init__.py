"""miro_rewards package."""
