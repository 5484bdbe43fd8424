"""Neural networks used by the avatar engines (torch only; never imports `avatarify`)."""
