"""fmforge sim package."""
