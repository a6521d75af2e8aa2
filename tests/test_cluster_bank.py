"""TSE cluster banks (algorithm.md §3.2): KMeans on the tiny CLIP, the authors' file format, caching, validation."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from excel.backbone import load_clip, load_tokenizer
from excel.config import load_config
from excel.text.cluster_bank import (ClusterBankError, bank_cache_path, build_cluster_bank, get_cluster_bank,
                                     kmeans_bank, load_cluster_bank, prepare_cluster_bank, save_cluster_bank)
from excel.text.knowledge import KnowledgeBaseError

from _tools import load_tool  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["cat", "dog", "car", "bus"]
ATTRS = ["It has Four legs", "its fur is soft", "it has a long tail", "it has round wheels", "it is painted red",
         "it has big windows"]


def make_kb(path: Path, classes=CLASSES, extra: str = "") -> Path:
    kb = {c: [f"a clean origami {c}. {a}{extra}." for a in ATTRS] for c in classes}
    path.write_text(json.dumps(kb))
    return path


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return load_clip("excel-tiny", None), load_tokenizer("excel-tiny")


@pytest.fixture()
def cfg(tmp_path):
    kb = make_kb(tmp_path / "kb.json")
    return load_config([REPO / "configs" / "voc.yaml", REPO / "configs" / "test_tiny.yaml"],
                       [f"tse.knowledge_base={kb}", f"tse.cache_dir={tmp_path / 'cache'}", "tse.num_clusters=5",
                        "tse.min_sentences=1",  # 6 sentences a class keep the banks small
                        f"data.class_names=[{','.join(CLASSES)}]", "data.prompt_names=[]"])


def reference_bank(model, tokenizer, kb: dict[str, list[str]], j: int):
    """One sentence at a time, then sklearn with the spec's settings; flags by an explicit loop."""
    rows, labels = [], []
    with torch.no_grad():
        for c, sents in enumerate(kb.values()):
            for s in sents:
                rows.append(F.normalize(model.encode_text(tokenizer([s.lower()])), dim=-1)[0])
                labels.append(c)
    x = torch.stack(rows).numpy()
    km = KMeans(n_clusters=j, random_state=0, n_init=10).fit(x)
    flags = np.zeros((len(kb), j), dtype=np.float32)
    for lab, a in zip(labels, km.labels_):
        flags[lab, a] = 1.0
    return torch.from_numpy(km.cluster_centers_.T.astype(np.float32)), torch.from_numpy(flags)


def test_kmeans_bank_hand_case():
    # three tight groups on the unit circle; class 0 owns groups 0 and 1, class 1 owns group 2
    angles = torch.tensor([0.0, 0.01, 2.0, 2.01, 4.0, 4.01])
    x = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    centers, flags = kmeans_bank(x, labels, num_classes=2, num_clusters=3)
    assert centers.shape == (2, 3) and flags.shape == (2, 3)
    assert centers.dtype == torch.float32 and flags.dtype == torch.float32
    means = torch.stack([x[0:2].mean(0), x[2:4].mean(0), x[4:6].mean(0)], dim=1)  # (D, 3)
    order = [int(torch.cdist(means.T[g:g + 1], centers.T).argmin()) for g in range(3)]
    assert sorted(order) == [0, 1, 2]
    torch.testing.assert_close(centers[:, order], means)
    expected = torch.zeros(2, 3)
    expected[0, order[0]] = expected[0, order[1]] = expected[1, order[2]] = 1
    torch.testing.assert_close(flags, expected)


def test_build_matches_reference_and_invariants(tiny_clip):
    model, tokenizer = tiny_clip
    kb = {c: [f"a clean origami {c}. {a}." for a in ATTRS] for c in CLASSES}
    centers, flags = build_cluster_bank(model, tokenizer, kb, num_clusters=5, batch_size=7)
    ref_c, ref_f = reference_bank(model, tokenizer, kb, 5)
    torch.testing.assert_close(centers, ref_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flags, ref_f)
    assert centers.shape == (32, 5) and flags.shape == (4, 5)
    assert (flags.sum(0) >= 1).all() and (flags.sum(1) >= 1).all()  # no empty cluster, every class placed
    assert (centers.norm(dim=0) <= 1 + 1e-5).all()  # means of unit vectors, not re-normalised


def test_too_many_clusters_is_clear(tiny_clip):
    model, tokenizer = tiny_clip
    with pytest.raises(ClusterBankError, match=r"num_clusters=30 is larger than .* sentences \(24\)"):
        build_cluster_bank(model, tokenizer, {c: ATTRS for c in CLASSES}, num_clusters=30)


def test_cache_hit_and_miss(cfg, tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    first = prepare_cluster_bank(cfg, model, tokenizer, progress=False)
    assert first.source == "built" and first.path.parent == tmp_path / "cache"
    mtime = first.path.stat().st_mtime_ns
    second = prepare_cluster_bank(cfg, model, tokenizer, progress=False)
    assert second.source == "cache" and second.path == first.path
    assert first.path.stat().st_mtime_ns == mtime
    torch.testing.assert_close(second.centers, first.centers)
    torch.testing.assert_close(get_cluster_bank(cfg, model, tokenizer, progress=False), first.centers)
    # a changed knowledge base is a different bank
    make_kb(Path(cfg.tse.knowledge_base), extra=" too")
    third = prepare_cluster_bank(cfg, model, tokenizer, progress=False)
    assert third.source == "built" and third.path != first.path
    assert len(list((tmp_path / "cache").glob("*.pth"))) == 2
    # other cluster counts are other banks
    cfg.tse.num_clusters = 4
    assert bank_cache_path(cfg, model) != third.path


def test_cache_key_tells_random_models_apart(cfg, tiny_clip):
    model, _ = tiny_clip
    torch.manual_seed(1)
    other = load_clip("excel-tiny", None)
    torch.manual_seed(0)
    same = load_clip("excel-tiny", None)
    assert bank_cache_path(cfg, other) != bank_cache_path(cfg, model)
    assert bank_cache_path(cfg, same) == bank_cache_path(cfg, model)


def test_authors_format_round_trip(tmp_path):
    centers, flags = torch.randn(512, 7), (torch.rand(20, 7) > 0.5).float()
    path = tmp_path / "bank.pth"
    save_cluster_bank(path, centers.double(), flags)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, list) and len(raw) == 2
    assert raw[0].dtype == torch.float32 and raw[0].shape == (512, 7) and raw[1].shape == (20, 7)
    c, f = load_cluster_bank(path)
    torch.testing.assert_close(c, centers)
    torch.testing.assert_close(f, flags)


@pytest.mark.parametrize("obj, message", [
    ({"centers": 1}, "must hold a list"),
    ([torch.zeros(4, 3)], "of length 1"),
    ([torch.zeros(4), torch.zeros(2, 3)], "centers \\(D,J\\) must be 2-D"),
    ([torch.zeros(4, 3), torch.zeros(2, 3, dtype=torch.long)], "flags \\(C_fg,J\\) must be floating point"),
    ([torch.zeros(4, 3), torch.zeros(2, 5)], "centers have 3 clusters"),
])
def test_load_errors_name_the_file(tmp_path, obj, message):
    path = tmp_path / "bad_bank.pth"
    torch.save(obj, path)
    with pytest.raises(ClusterBankError, match=message) as info:
        load_cluster_bank(path)
    assert str(path) in str(info.value)
    with pytest.raises(ClusterBankError, match="not found"):
        load_cluster_bank(tmp_path / "missing.pth")


def test_get_cluster_bank_sources(cfg, tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    bank_file = tmp_path / "authors.pth"
    centers = torch.randn(32, 9)
    save_cluster_bank(bank_file, centers, torch.ones(4, 9))
    cfg.tse.bank_file = str(bank_file)  # wins over the knowledge base, used as is (J=9, not num_clusters)
    torch.testing.assert_close(get_cluster_bank(cfg, model, tokenizer), centers)
    assert not (tmp_path / "cache").exists()
    save_cluster_bank(bank_file, torch.randn(512, 9), torch.ones(4, 9))
    with pytest.raises(ClusterBankError, match=r"authors.pth: centers have dimension D=512 .* embeds to D=32"):
        get_cluster_bank(cfg, model, tokenizer)
    save_cluster_bank(bank_file, torch.randn(32, 9), torch.ones(20, 9))
    with pytest.raises(ClusterBankError, match="flags have 20 class rows but data.class_names has 4"):
        get_cluster_bank(cfg, model, tokenizer)
    cfg.tse.enabled = False
    assert get_cluster_bank(cfg, model, tokenizer) is None
    cfg.tse.enabled, cfg.tse.bank_file, cfg.tse.knowledge_base = True, None, None
    assert get_cluster_bank(cfg, model, tokenizer) is None


def test_get_cluster_bank_validates_knowledge_base(cfg, tiny_clip):
    model, tokenizer = tiny_clip
    make_kb(Path(cfg.tse.knowledge_base), classes=["cat", "dog", "car"])
    with pytest.raises(KnowledgeBaseError, match="no entry for class 'bus'"):
        get_cluster_bank(cfg, model, tokenizer)
    cfg.tse.knowledge_base = "no/such/kb.json"
    with pytest.raises(ClusterBankError, match="tse.knowledge_base: file not found: no/such/kb.json"):
        get_cluster_bank(cfg, model, tokenizer)


def test_build_bank_tool(tmp_path, capsys):
    tool = load_tool("build_bank")
    kb = {c: [f"a clean origami {c}. {a}." for a in ATTRS] for c in CLASSES}
    kb["bus"] = list(kb["car"])  # identical sentences: 18 distinct points in 18 clusters, bus shares car's 6
    (tmp_path / "kb.json").write_text(json.dumps(kb))
    # --config layers like the other tools: a shipped name, then a file
    argv = ["--config", "voc.yaml", "--config", str(REPO / "configs" / "test_tiny.yaml"), f"tse.knowledge_base={tmp_path / 'kb.json'}",
            f"tse.cache_dir={tmp_path / 'cache'}", "tse.num_clusters=18", "tse.min_sentences=1",
            f"data.class_names=[{','.join(CLASSES)}]",
            "data.prompt_names=[]"]
    bank = tool.main(argv)
    out = capsys.readouterr().out
    counts = (bank.flags > 0).sum(1).tolist()
    for name, count in zip(CLASSES, counts):
        assert any(line.split() == [name, str(count)] for line in out.splitlines())
    assert counts == [6, 6, 6, 6]
    assert "WARNING: classes ['car', 'bus'] have identical cluster sets" in out
    assert "WARNING: classes ['cat'" not in out
    assert f"bank built and saved: {bank.path}" in out
    again = tool.main(argv)
    assert again.path == bank.path and "found in the cache" in capsys.readouterr().out
    tool.main(argv + ["--force"])
    assert "removed cached bank" in capsys.readouterr().out


def _dist_worker(rank: int, world: int, init_file: str, cfg_args: list[str], out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different random models: the others must still use rank 0's file
        model, tokenizer = load_clip("excel-tiny", None), load_tokenizer("excel-tiny")
        cfg = load_config([REPO / "configs" / "voc.yaml", REPO / "configs" / "test_tiny.yaml"], cfg_args)
        bank = prepare_cluster_bank(cfg, model, tokenizer, progress=False)
        torch.save({"source": bank.source, "path": str(bank.path), "centers": bank.centers},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_only_rank0_builds_under_distributed(tmp_path, monkeypatch):
    import torch.multiprocessing as mp
    from _collectives import checked_calls, checked_env

    for key, value in checked_env(tmp_path / "collectives.txt").items():   # the spawned processes inherit it
        monkeypatch.setenv(key, value)

    kb = make_kb(tmp_path / "kb.json")
    cfg_args = [f"tse.knowledge_base={kb}", f"tse.cache_dir={tmp_path / 'cache'}", "tse.num_clusters=5",
                "tse.min_sentences=1",
                f"data.class_names=[{','.join(CLASSES)}]", "data.prompt_names=[]"]
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), cfg_args, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # rank 1 receives rank 0's tensors (no shared disk needed), never builds
    assert r0["source"] == "built" and r1["source"] == "rank0" and r0["path"] == r1["path"]
    torch.testing.assert_close(r0["centers"], r1["centers"])
    assert len(list((tmp_path / "cache").glob("*.pth"))) == 1
    calls = checked_calls(tmp_path / "collectives.txt")
    assert {(r, name) for r, name, _, _ in calls} >= {(0, "broadcast_object_list"), (1, "broadcast_object_list")}
