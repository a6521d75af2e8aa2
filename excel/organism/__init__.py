"""The model organism: a small CLIP pretrained on the generated world (:mod:`excel.data.world`), shipped with
the package so that the demo, the end-to-end tests and the ablations show the method working offline."""
