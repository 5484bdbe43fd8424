"""Animation engines behind one Animator interface: `mesh` (embedded, no weights) and `fomm` (neural)."""
