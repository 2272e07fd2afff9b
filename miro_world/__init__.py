"""miro_world package."""
