"""Restorers: networks that map a compressed image to a restored one (one file per family, registered by name)."""
