"""Asset cards shipped with the package (registered by fspo_recipe.extension)."""
