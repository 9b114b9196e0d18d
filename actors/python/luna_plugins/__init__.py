"""luna_plugins: the base classes plugins for luna-matcher (and LUNA PLATFORM 5) import.

Shipped inside the luna-matcher binary; nothing to install."""
