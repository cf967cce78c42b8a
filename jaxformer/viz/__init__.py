"""Figures: matplotlib plots, token labels on figures, the HTML attention explorer."""
