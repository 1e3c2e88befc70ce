"""CLIP re-ranking: z = alpha*log d_p + (1-alpha)*log d_t on clamped cosines."""

from __future__ import annotations

import math

import pytest
import torch

from pmg.selection import TINY_CLIP_ARCH, ClipScorer, combine_scores, select_best


class FixedScorer:
    """Returns preset cosines: column 0 = d_p (preference text), column 1 = d_t (target text)."""

    def __init__(self, d_p, d_t):
        self.cos = torch.stack([torch.tensor(d_p), torch.tensor(d_t)], dim=1)

    def cosine(self, images, texts):
        assert len(texts) == 2 and images.shape[0] == self.cos.shape[0]
        return self.cos


def _images(k: int) -> torch.Tensor:
    return torch.zeros(k, 3, 8, 8)


def test_best_is_argmax_of_z():
    d_p, d_t = [0.30, 0.20, 0.28, 0.10], [0.10, 0.30, 0.25, 0.40]
    best, scores = select_best(_images(4), "red, dotted", ["hat"], FixedScorer(d_p, d_t), alpha=0.5)
    z = [0.5 * math.log(p) + 0.5 * math.log(t) for p, t in zip(d_p, d_t)]
    assert best == max(range(4), key=z.__getitem__) == 2
    torch.testing.assert_close(scores["z"], torch.tensor(z, dtype=torch.float64))
    torch.testing.assert_close(scores["d_p"], torch.tensor(d_p, dtype=torch.float64))
    torch.testing.assert_close(scores["d_t"], torch.tensor(d_t, dtype=torch.float64))


def test_alpha_edges_reduce_to_single_criteria():
    d_p, d_t = [0.30, 0.20, 0.28, 0.10], [0.10, 0.30, 0.25, 0.40]
    scorer = FixedScorer(d_p, d_t)
    assert select_best(_images(4), "p", "t", scorer, alpha=1.0)[0] == 0  # preference only
    assert select_best(_images(4), "p", "t", scorer, alpha=0.0)[0] == 3  # target only
    # alpha = 2/3 is the MindSpore demo's W_P = 2: argmax of 2*log d_p + log d_t
    z = [2 * math.log(p) + math.log(t) for p, t in zip(d_p, d_t)]
    assert select_best(_images(4), "p", "t", scorer, alpha=2 / 3)[0] == max(range(4), key=z.__getitem__)


def test_non_positive_cosines_never_give_nan():
    d_p, d_t = [-0.2, 0.0, 0.05, -1.0], [0.3, -0.1, 0.0, 0.2]
    best, scores = select_best(_images(4), "p", "t", FixedScorer(d_p, d_t), eps=1e-4)
    assert torch.isfinite(scores["z"]).all()
    assert best == 0  # clamped d_p ties at eps for 0 and 3, the better d_t wins; 2 has d_t clamped
    z = combine_scores(torch.tensor([-1.0]), torch.tensor([-1.0]), alpha=0.0)
    assert torch.isfinite(z).all() and z.item() == pytest.approx(math.log(1e-4))
    with pytest.raises(ValueError, match="alpha"):
        combine_scores(torch.tensor([0.1]), torch.tensor([0.1]), alpha=1.5)


@pytest.fixture(scope="module")
def tiny_scorer():
    pytest.importorskip("open_clip")
    return ClipScorer(TINY_CLIP_ARCH, pretrained=None, allow_random_weights=True)


def test_tiny_clip_scorer_shapes_and_range(tiny_scorer):
    assert tiny_scorer.random_weights and "random weights" in tiny_scorer.note
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cos = tiny_scorer.cosine(images, ["a red hat", "striped, dotted"])
    assert cos.shape == (3, 2) and cos.dtype == torch.float32
    assert (cos.abs() <= 1.0).all()
    # non-square, other-size input goes through the resize + centre crop
    assert tiny_scorer.cosine(torch.rand(2, 3, 20, 48), ["x"]).shape == (2, 1)
    best, scores = select_best(images, ["red", "hat"], "striped", tiny_scorer)
    assert 0 <= best < 3 and set(scores) == {"d_p", "d_t", "z"} and torch.isfinite(scores["z"]).all()
    # deterministic construction: a second scorer gives the same numbers
    again = ClipScorer(TINY_CLIP_ARCH, pretrained=None, allow_random_weights=True)
    torch.testing.assert_close(again.cosine(images, ["a red hat"]), cos[:, :1])


def test_random_weights_must_be_asked_for():
    pytest.importorskip("open_clip")
    with pytest.raises(ValueError, match="allow_random_weights"):
        ClipScorer("ViT-B-32", pretrained=None)
    with pytest.raises(ValueError, match="neither a known tag"):
        ClipScorer("ViT-B-32", pretrained="no-such-tag")


def test_missing_pretrained_weights_say_what_to_download():
    pytest.importorskip("open_clip")
    try:
        ClipScorer("ViT-B-32", pretrained="openai")
    except RuntimeError as err:
        assert "download" in str(err).lower() and "vit_base_patch32_clip_224.openai" in str(err)
    else:
        pytest.skip("ViT-B-32/openai weights are cached here: nothing missing to report")


def test_contact_sheet_tiles_and_size(tmp_path):
    from PIL import Image

    from pmg.sheets import FRAME_COLOUR, PAD, contact_sheet, layout

    colours = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)]
    candidates = [torch.tensor(c).view(3, 1, 1).expand(3, 32, 32) for c in colours]
    history = [Image.new("RGB", (40, 20), (0, 255, 255)), Image.new("RGB", (20, 20), (255, 0, 255))]
    labels = [f"wp={p} wt={t}\nz={-z:.2f}" for p, t, z in [(1, 1, 1.5), (2, 1, 1.2), (1, 2, 1.9), (2, 2, 2.0)]]
    path = contact_sheet(history, candidates, 1, tmp_path / "u1" / "sheet.png", tile=48, labels=labels, title="user 1")
    geo = layout(len(history), len(candidates), tile=48, title=True)
    assert geo.cols == 5  # 4 candidates + the chosen copy
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (geo.width, geo.height)
        assert geo.width == PAD + 5 * (48 + PAD)
        sheet = im.convert("RGB")
    centre = 24
    for i, c in enumerate(colours):  # candidate row: one tile per candidate, in order
        x, y = geo.box(1, i)
        assert sheet.getpixel((x + centre, y + centre)) == tuple(int(v * 255) for v in c)
    x, y = geo.box(1, 1)
    assert sheet.getpixel((x, y + centre)) == FRAME_COLOUR  # the chosen candidate is framed
    x, y = geo.box(1, 0)
    assert sheet.getpixel((x, y + centre)) != FRAME_COLOUR
    x, y = geo.box(1, geo.cols - 1)  # and repeated at the end of the row
    assert sheet.getpixel((x + centre, y + centre)) == (0, 255, 0)
    x, y = geo.box(0, 0)
    assert sheet.getpixel((x + centre, y + centre)) == (0, 255, 255)
    assert not list(path.parent.glob("*.tmp"))  # atomic write left no temporary file
