"""fmforge compiler package."""
