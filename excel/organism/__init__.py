"""The model organism: a small CLIP pretrained on a generated world, shipped with the package so that the demo, the
end-to-end tests and the ablations show the method working offline (docs/organism.md).

- :mod:`~excel.organism.world`: the world (20 classes with a look each, scenes with VOC's statistics, captions, the
  knowledge base); :mod:`~excel.organism.stats`: its scene statistics beside VOC's;
- :mod:`~excel.organism.synthetic`: the world written to disk in the VOC or COCO layout;
- :mod:`~excel.organism.pretrain`: contrastive pretraining with a local term; :mod:`~excel.organism.weights`: the
  shipped weight file (``model.clip.pretrained: organism``, registered with :func:`excel.backbone.load_clip` when
  this package is imported); :mod:`~excel.organism.evaluate`: zero-shot mAP of a split.
"""
from excel.organism.synthetic import WORLD_SIZE, make_synthetic_coco, make_synthetic_voc
from excel.organism.weights import SHIPPED, load_organism_weights, save_organism_weights
from excel.organism.world import World

__all__ = ["SHIPPED", "WORLD_SIZE", "World", "load_organism_weights", "make_synthetic_coco", "make_synthetic_voc",
           "save_organism_weights"]
