"""Sites, local days and settlement: the energy as someone bills it (docs/settlement.md)."""
