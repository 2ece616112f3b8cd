"""fmforge golden package."""
