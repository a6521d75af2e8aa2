"""The palette of the dataset masks (algorithm.md §9.5). It lives in :mod:`excel.utils.palette`, which the pictures
share; it is importable from here too, where the dataset writers look for it."""
from excel.utils.palette import IGNORE_COLOUR, NUM_VOC_COLOURS, colorize, palette_array, voc_palette

__all__ = ["IGNORE_COLOUR", "NUM_VOC_COLOURS", "colorize", "palette_array", "voc_palette"]
