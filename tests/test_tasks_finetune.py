"""finetune / evaluate / embed end to end on a small shard store of synthetic census cells
(train / val / test by tech_sample, as a build splits them), through the command line as users
run it."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from synth_support import N_GENES, with_proteins, write_split_by_tech_sample

from ssl_census.cli import main
from ssl_census.training.rundir import RunDir, load_encoder

SMALL = ["--hidden", "128,64,16", "--batch-size", "512", "--val-every", "20", "--log-every",
         "10", "--device", "cpu", "--workers", "1"]
FILE_GENES = 1_800  # an h5ad of the model's cells measures this many of its genes


@pytest.fixture(scope="module")
def work(synth_cells, tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    store = write_split_by_tech_sample(root / "shards", synth_cells)
    run = CliRunner().invoke(main, ["pretrain", "--method", "random_mask", "--shards",
                                    str(store), "--out", str(root / "pre"), "--max-steps", "60",
                                    "--hidden", "128,64,16", "--batch-size", "512",
                                    "--val-every", "30", "--device", "cpu", "--workers", "1"])
    assert run.exit_code == 0, run.output
    return {"root": root, "shards": store, "pre": root / "pre"}


@pytest.fixture(scope="module")
def unseen_h5ad(work, synth_cells):
    """The store's test cells as a user's h5ad: raw counts of only FILE_GENES of the model's
    genes, in another order."""
    test = pd.read_parquet(work["shards"] / "test" / "obs.parquet")
    cells = synth_cells[synth_cells.obs["tech_sample"].isin(set(test["tech_sample"]))]
    cells = cells[:, cells.var_names[:FILE_GENES][::-1]].copy()
    path = work["root"] / "unseen.h5ad"
    cells.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def celltype_run(work):
    out = work["root"] / "ct"
    _ok(["finetune", "--task", "celltype", "--shards", work["shards"], "--init", work["pre"],
         "--out", out, "--max-steps", "120", *SMALL])
    return out


def _ok(args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r


def test_celltype_from_pretrained_is_evaluated_beside_its_baselines(work, celltype_run):
    out = celltype_run
    card = RunDir(out).card
    assert card["task"] == "celltype" and card["init_method"] == "random_mask"
    assert card["init"] == str(work["pre"].resolve())
    assert (out / "var.parquet").is_file() and (out / "labels.parquet").is_file()
    report_path = work["root"] / "report" / "ct.json"
    r = _ok(["evaluate", "--run", out, "--shards", work["shards"], "--json", report_path,
             "--device", "cpu", "--workers", "1", "--batch-size", "2048", "--embedding-2d", "pca",
             "--pca-max-cells", "2048"])
    rep = json.loads(report_path.read_text())
    test_datasets = set(pd.read_parquet(work["shards"] / "test" / "obs.parquet")["dataset_id"])
    assert {role: s["name"] for role, s in rep["knn"].items()} == {
        "run": "finetune:celltype", "zero_shot": "zero-shot random_mask",
        "random_init": "random-init", "pca": "PCA-64"}
    for scores in [*rep["knn"].values(), rep["classifier"]]:
        assert 0 <= scores["plain"]["macro_f1"] <= 1
        # the hierarchy only ever turns a wrong prediction right
        assert scores["hierarchy_aware"]["micro_f1"] >= scores["plain"]["micro_f1"]
        assert set(scores["by_dataset"]) == test_datasets
    assert rep["n_test_labelled"] == rep["knn"]["pca"]["plain"]["n_cells"]
    # held-out donors, 16 types: PCA + kNN, the fine-tuned encoder's kNN and its classifier
    # classify far above chance and above an untrained encoder (the census's related T-cell
    # and monocyte types overlap, so not perfectly)
    macro = {role: scores["plain"]["macro_f1"] for role, scores in rep["knn"].items()}
    assert macro["pca"] > 0.4 and macro["run"] > 0.6 and macro["random_init"] < 0.3
    assert rep["classifier"]["plain"]["micro_f1"] > 0.7
    assert min(r["abundance"] for r in rep["knn"]["pca"]["per_class"]) > 0
    md = (work["root"] / "report" / "ct.md").read_text()
    assert "macro F1 (hierarchy)" in md and "zero-shot random_mask" in md
    assert (work["root"] / "report" / "ct-embedding.png").stat().st_size > 10_000
    assert (work["root"] / "report" / "ct-f1-vs-abundance.png").is_file()
    assert "classifier head" in r.output


def test_embed_writes_embeddings_and_predicted_types(work, celltype_run, unseen_h5ad):
    out = work["root"] / "embedded.h5ad"
    r = _ok(["embed", "--run", celltype_run, "--h5ad", unseen_h5ad, "--out", out])
    assert f"{FILE_GENES} of {N_GENES} model genes matched" in r.output
    a = ad.read_h5ad(out)
    assert a.obsm["X_ssl_census"].shape == (a.n_obs, 16)
    labels = pd.read_parquet(work["shards"] / "labels.parquet")
    assert set(a.obs["ssl_census_cell_type"]) <= set(labels["cell_type"])
    assert a.uns["ssl_census"]["genes_matched"] == FILE_GENES
    # the same cell types as annotated, for most of the held-out cells
    assert (a.obs["cell_type"].astype(str) == a.obs["ssl_census_cell_type"]).mean() > 0.6


def test_unseen_h5ad_is_evaluated_five_fold(work, unseen_h5ad):
    path = work["root"] / "unseen.json"
    _ok(["evaluate", "--run", work["pre"], "--h5ad", unseen_h5ad, "--label-key",
         "cell_type", "--json", path, "--no-plots"])
    rep = json.loads(path.read_text())
    assert rep["genes_matched"] == FILE_GENES and rep["protocol"].startswith("5-fold")
    assert rep["knn"]["pca"]["plain"]["macro_f1"] > 0.4  # 16 types: chance is about 0.06


def test_unseen_h5ad_is_classified_against_the_reference_stores_validation_cells(
        work, celltype_run, unseen_h5ad, monkeypatch):
    """The paper's unseen-data protocol: the file's cells are the queries, the store's
    validation cells the kNN reference, never the file's other cells."""
    n_query = ad.read_h5ad(unseen_h5ad, backed="r").n_obs
    from ssl_census.evaluation import report as report_module

    calls = []
    original = report_module.knn_classify

    def spy(reference, reference_labels, query, **kw):
        calls.append((len(reference), len(query)))
        return original(reference, reference_labels, query, **kw)

    monkeypatch.setattr(report_module, "knn_classify", spy)
    path = work["root"] / "stim.json"
    _ok(["evaluate", "--run", celltype_run, "--h5ad", unseen_h5ad, "--label-key",
         "cell_type_ontology_term_id", "--shards",
         work["shards"], "--json", path, "--no-plots", "--workers", "1", "--batch-size", "2048",
         "--pca-max-cells", "2048"])
    rep = json.loads(path.read_text())
    from ssl_census.shards.store import open_shards

    _, val_obs = open_shards(work["shards"]).split("val")
    n_val = int((val_obs["cell_type_code"] >= 0).sum())
    assert rep["n_reference"] == n_val and rep["n_query"] == n_query
    assert rep["reference"] == str(work["shards"]) and "validation cells" in rep["protocol"]
    assert calls and all(c == (n_val, n_query) for c in calls)  # every embedding
    assert set(rep["knn"]) == {"run", "zero_shot", "random_init", "pca"}
    for scores in [*rep["knn"].values(), rep["classifier"]["scored_on_known_labels"]]:
        assert scores["hierarchy_aware"]["micro_f1"] >= scores["plain"]["micro_f1"]
    assert rep["knn"]["pca"]["plain"]["macro_f1"] > 0.4  # 16 types: chance is about 0.06


def test_shallow_integration_moves_only_the_last_encoder_layer(work):
    out = work["root"] / "integ"
    _ok(["finetune", "--task", "integration", "--shards", work["shards"], "--init", work["pre"],
         "--out", out, "--batch-key", "donor_id", "--shallow", "--max-steps", "20", *SMALL])
    before, _ = load_encoder(work["pre"])
    after, card = load_encoder(out, checkpoint="last")
    assert card["task_spec"]["batch_categories"] == sorted(card["task_spec"]["batch_categories"])
    linears = [n for n, _ in after.named_parameters()]
    a, b = dict(after.named_parameters()), dict(before.named_parameters())
    assert all(torch.equal(a[n], b[n]) for n in linears[:-2])
    assert not torch.equal(a[linears[-2]], b[linears[-2]])  # last layer's weight moved
    metrics = RunDir(out).metrics()
    assert any(m["split"] == "val" and "mse_log1p" in m for m in metrics)


def test_reconstruction_decoder_starts_from_the_pretrained_decoder(work):
    """Fine-tuning keeps what pre-training learnt in the decoder, not only in the encoder."""
    pre = RunDir(work["pre"])
    pre_model = pre.load("best" if (pre.checkpoints / "best.pt").is_file() else "last")["model"]
    for name, extra in (("recon0", []), ("integ0", ["--batch-key", "donor_id"])):
        out = work["root"] / name
        task = "integration" if extra else "reconstruction"
        _ok(["finetune", "--task", task, "--shards", work["shards"], "--init", work["pre"],
             "--out", out, "--max-steps", "2", "--lr", "0", *extra, *SMALL])
        copied = RunDir(out).card["decoder_from_pretrained"]
        model = RunDir(out).load("last")["model"]
        linears = sorted({k.rsplit(".", 1)[0] for k in pre_model if k.startswith("decoder.")},
                         key=lambda k: int(k.split(".")[-1]))
        hidden, output = linears[:-1], linears[-1]
        assert copied == [f"{k.removeprefix('decoder.')}.{t}" for k in hidden
                          for t in ("weight", "bias")]
        for layer in hidden:
            w, w0 = model[f"{layer}.weight"], pre_model[f"{layer}.weight"]
            assert torch.equal(w[:, : w0.shape[1]], w0)  # batch columns (integration) fresh
            assert torch.equal(model[f"{layer}.bias"], pre_model[f"{layer}.bias"])
        assert not torch.equal(model[f"{output}.weight"], pre_model[f"{output}.weight"])
    scratch = work["root"] / "recon-random"
    _ok(["finetune", "--task", "reconstruction", "--shards", work["shards"], "--init",
         "random", "--out", scratch, "--max-steps", "1", *SMALL])
    assert RunDir(scratch).card["decoder_from_pretrained"] == []


def test_reconstruction_is_scored_with_explained_variance(work):
    out = work["root"] / "recon"
    _ok(["finetune", "--task", "reconstruction", "--shards", work["shards"], "--init",
         "random", "--out", out, "--max-steps", "80", *SMALL])
    losses = [m["loss"] for m in RunDir(out).metrics() if m["split"] == "train"]
    assert losses[-1] < losses[0]
    path = work["root"] / "recon.json"
    _ok(["evaluate", "--run", out, "--shards", work["shards"], "--json", path, "--no-plots",
         "--workers", "1", "--batch-size", "2048", "--pca-max-cells", "2048"])
    rec = json.loads(path.read_text())["reconstruction"]
    assert rec["mse"] > 0 and 0 < rec["explained_variance_weighted"] < 1


def test_rna_to_protein_beats_predicting_the_mean(work, synth_cells):
    cite = work["root"] / "cite.h5ad"
    with_proteins(synth_cells[:4_000], n_proteins=14).write_h5ad(cite)
    out = work["root"] / "cite"
    r = _ok(["finetune", "--task", "cross_modality", "--init", "random", "--shards",
             work["shards"], "--h5ad", cite, "--out", out, "--max-epochs", "8", "--hidden",
             "128,64,16", "--batch-size", "256", "--val-every", "40", "--device", "cpu"])
    scores = json.loads((out / "cross_modality_scores.json").read_text())
    assert len(scores["targets"]) == 14 and scores["n_test_cells"] == 400  # 10 % of the file
    assert scores["model"]["pearson"] > scores["mean_baseline"]["pearson"]
    assert scores["mse_model"] < scores["mse_mean_baseline"]
    assert "test_pearson" in r.output
    # the run reads the gene space of the store, so evaluate accepts it on that store
    assert RunDir(out).card["gene_list_sha256"] == RunDir(work["pre"]).card["gene_list_sha256"]


def test_bad_input_is_one_line_errors(work, synth_cells, unseen_h5ad, tmp_path):
    other = write_split_by_tech_sample(tmp_path / "fewer_genes", synth_cells[:, :900])
    cases = [
        (["evaluate", "--run", work["pre"], "--shards", other], "another gene space"),
        (["finetune", "--task", "celltype", "--shards", other, "--init", work["pre"], "--out",
          tmp_path / "x"], "another gene space"),
        (["evaluate", "--run", work["pre"], "--h5ad", unseen_h5ad, "--label-key", "celltype"],
         "no obs column 'celltype'"),
        (["evaluate", "--run", work["pre"], "--h5ad", unseen_h5ad], "needs --label-key"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 2, (args, r.output, r.exception)
        assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()
