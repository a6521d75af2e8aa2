"""The TSE analysis functions against hand-computed values."""
import math

import pytest
import torch

from excel.text import tse_aggregate
from excel.text.analysis import mean_pairwise_cosine, rank_auc, tse_parts


def test_tse_parts_hand_computed():
    # classes e1, e2; centres e1, e2, -e1; top_k = 0.5 masks int(0.5 * 3) = 1 logit per row
    # class 1: logits [1, 0, -1] -> the -1 masked, alpha [e/(e+1), 1/(e+1), 0], mix [e/(e+1), 1/(e+1)]
    fg = torch.eye(2, dtype=torch.float64)
    centers = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    alpha, mix, shared = tse_parts(fg, centers, top_k=0.5)
    e = math.e
    torch.testing.assert_close(alpha[0], torch.tensor([e / (e + 1), 1 / (e + 1), 0.0], dtype=torch.float64))
    torch.testing.assert_close(mix[0], torch.tensor([e / (e + 1), 1 / (e + 1)], dtype=torch.float64))
    torch.testing.assert_close(mix, tse_aggregate(fg, centers, 0.5) - fg)
    torch.testing.assert_close(shared, mix.mean(dim=0))
    assert torch.all(alpha.sum(dim=1).sub(1).abs() < 1e-12)


def test_mean_pairwise_cosine_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # distinct pairs: (e1, e2) 0, (e1, d) 1/sqrt2, (e2, d) 1/sqrt2 -> mean 2/(3 sqrt2)
    assert mean_pairwise_cosine(a) == pytest.approx(2 / (3 * math.sqrt(2)))
    # against b = [e1]: 1, 0, 1/sqrt2
    assert mean_pairwise_cosine(a, torch.tensor([[3.0, 0.0]])) == pytest.approx((1 + 1 / math.sqrt(2)) / 3)
    with pytest.raises(ValueError, match="two rows"):
        mean_pairwise_cosine(a[:1])


def test_rank_auc_hand_computed():
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert rank_auc(torch.tensor([0.9, 0.5, 0.4, 0.1]), torch.tensor([True, False, True, False])) == 0.75
    # a tie counts a half: positives 1.0, 0.5; negatives 0.5, 0.0 -> (1>0.5, 1>0, 0.5=0.5 half, 0.5>0) = 3.5/4
    assert rank_auc(torch.tensor([1.0, 0.5, 0.5, 0.0]), torch.tensor([True, True, False, False])) == 0.875
    assert rank_auc(torch.tensor([0.0, 1.0]), torch.tensor([True, False])) == 0.0
    with pytest.raises(ValueError, match="positives and negatives"):
        rank_auc(torch.tensor([0.0, 1.0]), torch.tensor([True, True]))


def test_text_geometry_hand_computed():
    from tse_geometry import text_geometry

    # classes e1, e2, background e3 (D = 4); centres e1, e2 (J = 2, top_k = 1.0 keeps both), one per class
    fg = torch.eye(4, dtype=torch.float64)[:2]
    bg = torch.eye(4, dtype=torch.float64)[2:3]
    centers = torch.eye(4, dtype=torch.float64)[:, :2]
    flags = torch.eye(2, dtype=torch.float64)
    g = text_geometry(fg, bg, centers, flags, top_k=1.0)
    a, b = math.e / (math.e + 1), 1 / (math.e + 1)       # class 1: alpha [a, b], mix [a, b, 0, 0]
    assert g["own_cluster_weight"] == pytest.approx([a, a])
    assert g["clusters_per_class"] == [1, 1] and g["shared_clusters"] == 0
    assert g["shared_norm"] == pytest.approx(math.sqrt(0.5))                  # shared part [1/2, 1/2, 0, 0]
    assert g["class_specific_norm"] == pytest.approx(math.sqrt(2) * (a - 0.5))  # [a - 1/2, b - 1/2]
    # enriched rows [1 + a, b] and [b, 1 + a]: cosine 2 (1 + a) b / ((1 + a)^2 + b^2); before TSE they are orthogonal
    assert g["class_class_cos"] == pytest.approx([0.0, 2 * (1 + a) * b / ((1 + a) ** 2 + b ** 2)])
    assert g["class_background_cos"] == pytest.approx([0.0, 0.0])
    assert g["before_after_cos"] == pytest.approx((1 + a) / math.hypot(1 + a, b))
    assert g["shared_background_cos"] == pytest.approx(0.0)
    # the class prompts' mean direction is (e1 + e2) / sqrt2: each class row at 1/sqrt2, the background row at 0
    assert g["class_to_class_mean"] == pytest.approx(1 / math.sqrt(2))
    assert g["background_to_class_mean"] == pytest.approx(0.0)


def test_binned_means_hand_computed():
    from tse_geometry import binned_means

    shares = torch.tensor([0.0, 0.01, 0.3, 0.5, 1.0])
    values = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0])
    # [0, 0.2): 1, 3 -> 2; [0.2, 0.5): 5; [0.5, 1.0] (closed): 7, 9 -> 8
    assert binned_means(shares, values, (0.0, 0.2, 0.5, 1.0)) == [(2, 2.0), (1, 5.0), (2, 8.0)]
    empty = binned_means(shares, values, (0.6, 0.9, 1.0))
    assert empty[0][0] == 0 and math.isnan(empty[0][1]) and empty[1] == (1, 9.0)


def test_tse_geometry_runs_on_a_tiny_clip(mini_voc, tmp_path, capsys):
    from tse_geometry import main

    torch.manual_seed(0)                                # the random-init tiny CLIP the tool loads
    out = main(["--images", "4", f"data.root={mini_voc}", "data.num_workers=0", "model.clip.name=excel-tiny",
                "model.clip.pretrained=null", "model.input_size=64", "tse.num_clusters=16", "tse.kmeans_n_init=1",
                f"tse.cache_dir={tmp_path}"])
    text, patches = out["text"], out["patches"]
    assert len(text["clusters_per_class"]) == 20 and sum(text["clusters_per_class"]) >= 16
    # random weights: clusters mix classes, so a class may own every cluster it keeps (weight 1)
    assert all(0 < w <= 1 + 1e-6 for w in text["own_cluster_weight"])
    # the mix is the shared part plus the class-specific rest, so neither norm exceeds the other plus the mix
    assert text["shared_norm"] <= text["mix_norm"] + text["class_specific_norm"] + 1e-6
    assert 0 <= patches["shared_foreground_auc"] <= 1 and patches["images"] == 4
    generic = patches["generic_foreground_auc"]
    assert set(generic) == {"the class prompts' mean", "the background prompts' mean", "the images' mean embedding"}
    assert all(0 <= v <= 1 for v in generic.values())
    image_mean = out["image_mean"]
    assert 0 < image_mean["resultant_length"] <= 1 + 1e-6
    assert -1 <= image_mean["cos_class_mean"] <= 1 and -1 <= image_mean["cos_shared"] <= 1
    assert all(0 <= v <= 1 for v in patches["class_auc"].values())
    printed = capsys.readouterr().out
    assert "foreground vs background along the shared part" in printed and "text bank" in printed
    assert "along the class prompts' mean" in printed
    crops = out["crops"]
    assert [r["object_share"] for r in crops] == [[0.0, 0.02], [0.02, 0.2], [0.2, 0.5], [0.5, 1.0]]
    assert sum(r["crops"] for r in crops) > 0 and "by the crop's object share" in printed
    assert all(-1 <= r["cos_to_class_mean"] <= 1 for r in crops if r["crops"])


def test_direction_aucs_hand_computed():
    from tse_geometry import direction_aucs

    # patches 0 and 1 are foreground; x = (3, 1, 2, 0), y = (0, 2, 1, 3)
    dense = torch.tensor([[3.0, 0.0], [1.0, 2.0], [2.0, 1.0], [0.0, 3.0]])
    foreground = torch.tensor([True, True, False, False])
    aucs = direction_aucs(dense, foreground, {"x": torch.tensor([1.0, 0.0]), "y": torch.tensor([0.0, 1.0]),
                                              "sum": torch.tensor([1.0, 1.0])})
    # along x: fg (3, 1) against bg (2, 0) wins 3 of 4 pairs; along y: fg (0, 2) against bg (1, 3) wins 1 of 4;
    # along x + y every patch scores 3: all ties, 0.5
    assert aucs == pytest.approx({"x": 0.75, "y": 0.25, "sum": 0.5})


def test_mean_image_embedding_by_hand():
    """Two images embedding to orthogonal unit vectors have a mean of norm 1/sqrt(2); alike, of norm 1."""
    from types import SimpleNamespace

    from tse_geometry import mean_image_embedding

    class Fake:
        visual = SimpleNamespace(image_size=(8, 8))

        def encode_image(self, x):            # (1, 3, 8, 8) -> (1, 2): [a, b] scaled by 3 (normalised by the tool)
            assert x.shape == (1, 3, 8, 8)
            return 3 * torch.stack([x[:, 0].mean(), x[:, 1].mean()])[None]

    red, green = torch.zeros(3, 5, 6), torch.zeros(3, 5, 6)
    red[0], green[1] = 1, 1
    mean = mean_image_embedding(Fake(), [{"image": red}, {"image": green}], 2)
    assert torch.allclose(mean, torch.tensor([0.5, 0.5])) and math.isclose(float(mean.norm()), 2 ** -0.5, rel_tol=1e-6)
    assert torch.allclose(mean_image_embedding(Fake(), [{"image": red}, {"image": red}], 2), torch.tensor([1.0, 0.0]))
