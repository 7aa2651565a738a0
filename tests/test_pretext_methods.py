"""The six methods on synthetic census values: which genes are seen, which are scored, and
that the loss counts the scored genes only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pretrain_support import Batch, gene_sets_for, pretrain_store, split_matrix

from ssl_census.core.errors import UserError
from ssl_census.models.mlp import Decoder, Encoder
from ssl_census.pretext import build_method
from ssl_census.pretext.barlow import barlow_loss
from ssl_census.pretext.base import MaskedAutoencoder
from ssl_census.pretext.byol import BYOL
from ssl_census.pretext.gene_programmes import GeneProgrammes
from ssl_census.pretext.gp_mask import GeneProgrammeMasking
from ssl_census.pretext.programmes import ProgrammeSampler

TINY = {"hidden": [64, 16], "dropout": 0.1}
MASKING = ("random_mask", "gp_mask", "gp_to_gp", "gp_to_tf")


@pytest.fixture(scope="module")
def cells(synth_cells, tmp_path_factory):
    store = pretrain_store(synth_cells, tmp_path_factory.mktemp("pretrain") / "shards")
    return store, split_matrix(store, "train")[:256]


def make(method, cells, gene_sets, **options):
    store, _ = cells
    return build_method(method, store.var["feature_name"].tolist(), model=TINY,
                        options=options, gene_sets=gene_sets_for(method, gene_sets))


def programme_rows(m):
    """Dense [programmes, genes] membership of a method's sampler."""
    return m.sampler.members.to_dense().T.bool()


def test_random_masking_hides_half_the_genes_and_scores_them(cells, synth_gene_sets):
    m = make("random_mask", cells, synth_gene_sets)
    visible, scored = m.masks(cells[1])
    assert torch.equal(visible, ~scored)
    assert abs(scored.float().mean().item() - 0.5) < 0.01
    assert (scored.float().mean(1) - 0.5).abs().max() < 0.05  # per cell, not per batch


def test_gp_masking_hides_whole_programmes_up_to_the_rate(cells, synth_gene_sets):
    m = make("gp_mask", cells, synth_gene_sets, mask_rate=0.02)
    visible, scored = m.masks(cells[1])
    assert torch.equal(visible, ~scored)
    progs = programme_rows(m)
    # every hidden gene belongs to a programme that is hidden whole
    whole = (progs[None] & ~scored[:, None]).sum(-1) == 0  # [cells, programmes] fully hidden
    covered = (whole.float() @ progs.float()) > 0
    assert torch.equal(covered, scored)
    frac = scored.float().mean(1)
    largest = progs.sum(1).max().item() / scored.shape[1]
    assert frac.min() > 0 and frac.max() <= 0.02 + largest


def overlapping_programmes(n_genes=200, n_sets=40, size=12, pool=120, seed=0):
    """Gene sets drawn from the first ``pool`` genes, so they overlap a lot."""
    rng = np.random.default_rng(seed)
    genes = [np.sort(rng.choice(pool, size, replace=False)) for _ in range(n_sets)]
    return GeneProgrammes([f"set{i}" for i in range(n_sets)], genes, n_genes)


def test_gp_masking_reaches_the_rate_as_a_union_of_overlapping_programmes():
    programmes = overlapping_programmes()
    sampler = ProgrammeSampler(programmes)
    torch.manual_seed(0)
    hidden = sampler.until_rate(300, 0.4)
    assert sampler.until_rate(300, 0.4, chunk=128).shape == hidden.shape  # in chunks of cells
    # summed sizes would stop early (overlaps counted twice): the union reaches the rate
    assert (hidden.float().mean(1) >= 0.4).all()
    progs = torch.stack([torch.zeros(200, dtype=torch.bool).index_fill_(
        0, torch.from_numpy(g), True) for g in programmes.genes])
    whole = (progs[None] & ~hidden[:, None]).sum(-1) == 0  # programmes hidden whole
    assert torch.equal((whole.float() @ progs.float()) > 0, hidden)  # only whole programmes
    assert (hidden[:, 120:] == 0).all()  # genes in no programme stay visible
    # a fresh draw per cell, not one fixed mask
    assert len({tuple(row.nonzero().flatten().tolist()) for row in hidden}) > 250


def test_gp_masking_refuses_programmes_that_cannot_reach_the_rate(caplog):
    programmes = overlapping_programmes()  # cover at most 120 of 200 genes
    coverage = len(np.unique(np.concatenate(programmes.genes))) / 200
    encoder, decoder = Encoder(200, (32, 8)), Decoder(200, (32, 8))
    with pytest.raises(UserError) as e:
        GeneProgrammeMasking(encoder, decoder, programmes, mask_rate=0.7)
    assert f"cover {coverage:.1%} of the gene space" in str(e.value)
    assert "msigdb:c8" in e.value.fix and "accept_lower_rate" in e.value.fix
    m = GeneProgrammeMasking(encoder, decoder, programmes, mask_rate=0.7, accept_lower_rate=True)
    assert "every programme is masked" in caplog.text
    visible, hidden = m.masks(torch.ones(50, 200))
    assert torch.allclose(hidden.float().mean(1), torch.tensor(coverage))
    out = m.loss(Batch(torch.rand(50, 200)))
    assert out["masked_fraction"].item() == pytest.approx(coverage)


def test_rescaling_is_an_option_of_the_masking_methods(cells, synth_gene_sets):
    x = cells[1]
    for method in ("random_mask", "gp_mask"):
        plain = make(method, cells, synth_gene_sets, rescale=False)
        scaled = make(method, cells, synth_gene_sets)
        visible = torch.rand(x.shape) < 0.7
        assert torch.equal(plain.masked_input(x, visible), x * visible)
        mass = scaled.masked_input(x, visible).sum(1)
        frac = visible.float().mean(1)
        assert torch.allclose(mass, (x * visible).sum(1) / frac)


def test_gp_to_gp_keeps_and_scores_exactly_one_programme(cells, synth_gene_sets):
    m = make("gp_to_gp", cells, synth_gene_sets)
    visible, scored = m.masks(cells[1])
    assert torch.equal(visible, scored)
    progs = programme_rows(m)
    matches = (visible[:, None, :] == progs[None]).all(-1)
    assert matches.any(1).all()
    assert len(set(matches.float().argmax(1).tolist())) > 10  # programmes vary between cells


def test_gp_to_tf_keeps_targets_hides_factor_and_scores_only_factor(cells, synth_gene_sets):
    m = make("gp_to_tf", cells, synth_gene_sets)
    visible, scored = m.masks(cells[1])
    assert (scored.sum(1) == 1).all()
    assert not (visible & scored).any()
    factor = scored.float().argmax(1)
    progs = programme_rows(m)
    k = (visible[:, None, :] == progs[None]).all(-1).float().argmax(1)
    assert torch.equal(m.sampler.regulators[k], factor)


@pytest.mark.parametrize("method", MASKING)
def test_masked_input_is_zero_and_loss_ignores_unscored_predictions(method, cells, synth_gene_sets):
    m = make(method, cells, synth_gene_sets)
    x = cells[1]
    seen, captured = {}, {}
    fixed = torch.randn_like(x)
    original_masks = m.masks

    def masks(inp):
        seen["visible"], seen["scored"] = original_masks(inp)
        return seen["visible"], seen["scored"]

    m.masks = masks
    m.encoder.register_forward_hook(lambda mod, args, out: captured.update(input=args[0]))
    torch.manual_seed(1)
    base = m.loss(Batch(x))["loss"]
    kept = x * seen["visible"]  # hidden genes enter as 0
    if method in ("random_mask", "gp_mask"):  # visible ones scaled up to the unmasked mass
        kept = kept / seen["visible"].float().mean(1, keepdim=True)
    assert torch.allclose(captured["input"], kept)

    def shifted(where):
        m.reconstruct = lambda inp, vis: fixed + 3.0 * where
        torch.manual_seed(1)
        return m.loss(Batch(x))["loss"]

    reference = shifted(torch.zeros_like(x))
    assert not torch.equal(reference, base)
    scored = seen["scored"]
    assert torch.allclose(shifted(~scored), reference)  # unscored predictions do not count
    assert not torch.allclose(shifted(scored), reference)
    expected = ((fixed - x).square() * scored).sum() / scored.sum()
    assert torch.allclose(reference, expected)


def test_every_masking_method_is_a_masked_autoencoder(cells, synth_gene_sets):
    for method in MASKING:
        assert isinstance(make(method, cells, synth_gene_sets), MaskedAutoencoder)


def test_byol_target_moves_every_step_and_differs_from_online(cells, synth_gene_sets):
    m = make("byol", cells, synth_gene_sets, projector_hidden=128, predictor_hidden=128)
    assert isinstance(m, BYOL)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    x = cells[1]
    for _ in range(3):
        before = [t.clone() for _, t in m.online_target_pairs()]
        m.loss(Batch(x))["loss"].backward()
        opt.step()
        opt.zero_grad()
        m.after_step()
        for (online, target), old in zip(m.online_target_pairs(), before, strict=True):
            assert not torch.equal(target, old)
            assert not torch.equal(target, online)
            assert torch.allclose(target, 0.99 * old + 0.01 * online, atol=1e-6)
    assert all(not t.requires_grad for _, t in m.online_target_pairs())


def test_barlow_loss_matches_its_definition():
    torch.manual_seed(0)
    z1, z2 = torch.randn(64, 8), torch.randn(64, 8)
    n1 = (z1 - z1.mean(0)) / z1.std(0, unbiased=False)
    n2 = (z2 - z2.mean(0)) / z2.std(0, unbiased=False)
    c = n1.T @ n2 / 64
    expected = sum((1 - c[i, i]) ** 2 for i in range(8)) + 0.0051 * sum(
        c[i, j] ** 2 for i in range(8) for j in range(8) if i != j)
    assert torch.allclose(barlow_loss(z1, z2, 0.0051), expected, rtol=1e-4)
    assert barlow_loss(z1, z1, 0.0051) < expected  # identical views correlate on the diagonal


def test_contrastive_views_differ_and_stay_non_negative(cells, synth_gene_sets):
    m = make("barlow", cells, synth_gene_sets)
    x = cells[1]
    v1, v2 = m.augment(x), m.augment(x)
    assert (v1 >= 0).all() and not torch.equal(v1, v2) and not torch.equal(v1, x)
    zeroed = ((v1 == 0) & (x > 0)).float().sum() / (x > 0).float().sum()
    assert 0.05 < zeroed.item() < 0.15  # dropout masking at about 0.1
