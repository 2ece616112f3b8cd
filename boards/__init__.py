"""fmforge boards package."""
