"""The VOC palette of the dataset masks (algorithm.md §9.5). The colour maps live in :mod:`excel.utils.palette`,
which the pictures share; they are importable from here too, where the dataset writers look for them."""
from excel.utils.palette import IGNORE_COLOUR, NUM_VOC_COLOURS, colorize, full_palette, palette_array, voc_palette

__all__ = ["IGNORE_COLOUR", "NUM_VOC_COLOURS", "colorize", "full_palette", "palette_array", "voc_palette"]
