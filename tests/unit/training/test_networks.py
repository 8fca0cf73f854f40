"""Networks, losses, augmentation, selections: tiny and fast, but each assertion can fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ich.spec import MODEL_KEYS
from training.augment import AugmentConfig, augment_batch, paste_lesions
from training.losses import dice_bce_loss, soft_dice_loss
from training.networks import (
    InceptionUNet,
    WeightModel,
    load_checkpoint,
    morphological_opening,
    save_checkpoint,
    slice_probability,
)
from training.selections import SliceTable, patient_split, selection_indices


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: the machine is shared with a training job; these nets are tiny anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _toy_batch(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 4, size, size, generator=gen) * 0.2
    y = torch.zeros(n, 1, size, size)
    y[:, :, 8:16, 8:16] = 1.0
    x = x + y * 0.6  # the "lesion" is brighter: learnable
    return x, y


def test_unet_shapes_and_range() -> None:
    net = InceptionUNet(width=4, depth=2).eval()
    x, _ = _toy_batch(2, 32)
    with torch.no_grad():
        p = net(x)
    assert p.shape == (2, 1, 32, 32)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert net.classify(x).shape == (2, 5)


def test_tiny_network_loss_falls() -> None:
    torch.manual_seed(0)
    net = InceptionUNet(width=4, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = _toy_batch(2, 24)
    losses = []
    for _ in range(20):
        loss = dice_bce_loss(net.logits(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_training_is_reproducible() -> None:
    def one_run() -> torch.Tensor:
        torch.manual_seed(3)
        net = InceptionUNet(width=4, depth=2)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x, y = _toy_batch()
        for _ in range(2):
            loss = dice_bce_loss(net.logits(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return net.head.weight.detach().clone()

    assert torch.equal(one_run(), one_run())


def test_soft_dice_perfect_and_disjoint() -> None:
    t = torch.zeros(1, 1, 8, 8)
    t[..., 2:4, 2:4] = 1
    assert float(soft_dice_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_dice_loss(1 - t, t)) > 0.9


def test_opening_removes_isolated_pixel_keeps_blob() -> None:
    m = torch.zeros(1, 1, 16, 16)
    m[0, 0, 2, 2] = 1.0  # stray pixel
    m[0, 0, 8:13, 8:13] = 0.8  # a 5x5 lesion
    opened = morphological_opening(m, 3)
    assert float(opened[0, 0, 2, 2]) == 0.0
    assert float(opened[0, 0, 10, 10]) == pytest.approx(0.8)
    stray_only = torch.zeros(1, 1, 16, 16)
    stray_only[0, 0, 5, 5] = 0.99
    assert float(slice_probability(stray_only, 3)) == 0.0
    assert float(slice_probability(stray_only, 1)) == pytest.approx(0.99)


def test_weight_model_outputs() -> None:
    torch.manual_seed(0)
    wm = WeightModel(hidden=4, opening=3)
    torch.nn.init.normal_(wm.fc.weight, std=0.5)  # non-uniform weights
    maps = [torch.rand(3, 1, 24, 24) for _ in MODEL_KEYS]
    weights, fused, sp = wm(*maps)
    assert weights.shape == (3, 5) and fused.shape == (3, 1, 24, 24) and sp.shape == (3, 1)
    assert torch.allclose(weights.sum(1), torch.ones(3), atol=1e-6)
    expected = sum(weights[:, i, None, None, None] * maps[i] for i in range(5))
    assert torch.allclose(fused, expected, atol=1e-6)
    assert torch.allclose(sp, slice_probability(fused, 3))


def test_weight_model_starts_as_plain_mean() -> None:
    wm = WeightModel()
    maps = [torch.rand(2, 1, 16, 16) for _ in MODEL_KEYS]
    weights, fused, _ = wm(*maps)
    assert torch.allclose(weights, torch.full((2, 5), 0.2))
    assert torch.allclose(fused, torch.stack(maps).mean(0), atol=1e-6)


def test_checkpoint_round_trip(tmp_path) -> None:
    net = InceptionUNet(width=4, depth=2).eval()
    save_checkpoint(tmp_path / "all" / "best.pt", "unet", net, iteration=5)
    back = load_checkpoint(tmp_path / "all" / "best.pt")
    assert isinstance(back, InceptionUNet) and back.hparams == net.hparams
    x, _ = _toy_batch(1, 32)
    assert torch.equal(back(x), net(x))
    wm = WeightModel(hidden=4, opening=5)
    save_checkpoint(tmp_path / "weight" / "best.pt", "weight", wm)
    assert isinstance(load_checkpoint(tmp_path / "weight" / "best.pt"), WeightModel)


def test_augment_deterministic_and_consistent() -> None:
    x, y = _toy_batch(4, 32)
    cfg = AugmentConfig(flip=True, rotate_deg=10, scale=0.1, intensity=0.05)
    a = augment_batch(x, y, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, y, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}
    assert float(a[0].min()) >= 0.0 and float(a[0].max()) <= 1.0
    # the mask moved with the image: the lesion (bright) stays inside the transformed mask
    inside = a[0][:, 0][a[1][:, 0] > 0].mean()
    outside = a[0][:, 0][a[1][:, 0] == 0].mean()
    assert inside > outside + 0.3


def test_paste_makes_positive_inside_brain() -> None:
    img = torch.zeros(2, 4, 16, 16)
    img[:, 3, 4:12, 4:12] = 0.5  # brain (stripped channel) region
    masks = torch.zeros(2, 1, 16, 16)
    donor_img = torch.ones(1, 4, 16, 16)
    donor_mask = torch.zeros(1, 1, 16, 16)
    donor_mask[0, 0, 2:8, 2:8] = 1
    out_img, out_mask = paste_lesions(
        img, masks, donor_img, donor_mask, 1.0, torch.Generator().manual_seed(0)
    )
    assert out_mask.sum() == 2 * 16  # 4x4 overlap of donor lesion and brain, in both samples
    assert float(out_img[0, 0, 5, 5]) == 1.0 and float(out_img[0, 0, 2, 2]) == 0.0


def _table() -> SliceTable:
    pids, subs, pos = [], [], []
    rng = np.random.default_rng(0)
    for p in range(30):
        for _s in range(10):
            pids.append(f"{p:03d}")
            sub = np.zeros(5, dtype=int)
            if p < 12 and _s in (4, 5):
                sub[p % 5] = 1
            subs.append(sub)
            pos.append(sub.any())
    positive = np.array(pos)
    vols = {f"{p:03d}": (float(p) if p < 12 else 0.0) for p in range(30)}
    return SliceTable(
        np.array(pids), np.array(subs), positive, positive * rng.integers(5, 50, len(pos)), vols
    )


def test_split_patient_wise_and_selections_use_train_only() -> None:
    t = _table()
    split = patient_split(t, 8, seed=1)
    assert len(split["val"]) == 8 and not set(split["val"]) & set(split["train"])
    assert patient_split(t, 8, seed=1) == split
    val_pos = [p for p in split["val"] if t.positive[t.pids == p].any()]
    assert 2 <= len(val_pos) <= 5
    for name in ("all", "sdh", "sah", "small"):
        pos, neg = selection_indices(t, name, split["train"])
        assert np.isin(t.pids[pos], split["train"]).all() and np.isin(t.pids[neg], split["train"]).all()
        assert t.positive[pos].all() and not t.positive[neg].any()
    pos, _ = selection_indices(t, "small", split["train"])
    assert all(0 < t.patient_volume_ml[p] <= 5 for p in t.pids[pos])


def test_flip_tta_averages_the_map_and_the_mirrored_map_of_the_mirror() -> None:
    torch.manual_seed(0)
    plain = InceptionUNet(width=4, depth=2).eval()
    tta = InceptionUNet(width=4, depth=2, flip_tta=True).eval()
    tta.load_state_dict(plain.state_dict())
    x, _ = _toy_batch(2, 32)
    with torch.no_grad():
        expected = 0.5 * (plain(x) + torch.flip(plain(torch.flip(x, dims=[3])), dims=[3]))
        got = tta(x)
        mirrored_input = tta(torch.flip(x, dims=[3]))
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, plain(x), atol=1e-4)  # the flip really changes the map
    # the averaged network is left-right equivariant: mirroring the slice mirrors the map
    assert torch.allclose(mirrored_input, torch.flip(got, dims=[3]), atol=1e-6)


def test_checkpoint_keeps_flip_tta(tmp_path) -> None:
    net = InceptionUNet(width=4, depth=2, flip_tta=True)
    save_checkpoint(tmp_path / "best.pt", "unet", net)
    loaded = load_checkpoint(tmp_path / "best.pt")
    assert isinstance(loaded, InceptionUNet) and loaded.flip_tta is True


def test_rotate_tta_averages_three_angles_and_zero_turns_it_off() -> None:
    torch.manual_seed(0)
    net = InceptionUNet(width=4, depth=2, flip_tta=True).eval()
    x, _ = _toy_batch(2, 32)
    with torch.no_grad():
        flip_only = net(x)
        net.set_rotate_tta(8.0)
        rotated = net(x)
        net.set_rotate_tta(0.0)
        again = net(x)
    assert torch.equal(flip_only, again)
    assert rotated.shape == flip_only.shape and float(rotated.min()) >= 0.0 and float(rotated.max()) <= 1.0
    assert not torch.allclose(rotated, flip_only, atol=1e-4)
    # away from the corners (rotated out of the field of view) the three views agree on a smooth map
    assert float((rotated - flip_only)[..., 8:24, 8:24].abs().mean()) < 0.1


def test_rotation_grid_turns_an_image_about_its_centre() -> None:
    from training.networks import _rotation_grid

    img = torch.zeros(1, 1, 33, 33)
    img[0, 0, 16, 24] = 1.0  # a dot right of the centre
    turned = torch.nn.functional.grid_sample(img, _rotation_grid(90.0, img), align_corners=False)
    y, x = divmod(int(torch.argmax(turned)), 33)
    assert abs(x - 16) <= 1 and abs(y - 16) == 8  # now straight above or below the centre
    assert _rotation_grid(8.0, torch.zeros(5, 4, 16, 16)).shape == (5, 16, 16, 2)
