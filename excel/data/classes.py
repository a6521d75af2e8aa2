"""Class, prompt and background names of PASCAL VOC 2012 and MS COCO 2014: the one place the library spells them.

``configs/voc.yaml`` and ``configs/coco.yaml`` hold the same lists as config values, where users edit them for their
own datasets; a test keeps the two in step.
"""
from __future__ import annotations

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
# the reference's prompt names: some classes carry synonyms (algorithm.md §2.2)
VOC_PROMPT_NAMES = ("aeroplane", "bicycle", "bird avian", "boat", "bottle", "bus", "car", "cat", "chair seat", "cow",
                    "diningtable", "dog", "horse", "motorbike", "person with clothes,people,human", "pottedplant",
                    "sheep", "sofa", "train", "tvmonitor screen")
VOC_BACKGROUND_NAMES = ("ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea",
                        "railway", "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road",
                        "rock", "street", "valley", "bridge", "sign")
COCO_CLASSES = ("person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
                "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
                "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
                "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
                "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
                "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
                "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
                "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
                "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
