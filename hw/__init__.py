"""fmforge hw package."""
