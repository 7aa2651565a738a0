"""finetune / evaluate / embed end to end on a small shard store of real cells (kang PBMCs,
donors split into train / val / test), through the command line as users run it."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner

from ssl_census.cli import main
from ssl_census.shards.store import write_store_from_arrays
from ssl_census.training.rundir import RunDir, load_encoder

KANG_CL = {  # shared/data/README.md: label -> Cell Ontology, as a census layout stores them
    "CD4 T cells": ("CL:0000624", "CD4-positive, alpha-beta T cell"),
    "CD8 T cells": ("CL:0000625", "CD8-positive, alpha-beta T cell"),
    "CD14+ Monocytes": ("CL:0001054", "CD14-positive monocyte"),
    "FCGR3A+ Monocytes": ("CL:0002396", "CD14-low, CD16-positive monocyte"),
    "B cells": ("CL:0000236", "B cell"),
    "NK cells": ("CL:0000623", "natural killer cell"),
    "Dendritic cells": ("CL:0000451", "dendritic cell"),
    "Megakaryocytes": ("CL:0000556", "megakaryocyte"),
}
SMALL = ["--hidden", "128,64,16", "--batch-size", "512", "--val-every", "20", "--log-every",
         "10", "--device", "cpu", "--workers", "1"]


def _kang_store(shared_data, out, genes=None):
    a = ad.read_h5ad(shared_data / "h5ad" / "kang_ctrl_muscat_se.h5ad")
    if genes is not None:
        a = a[:, :genes]
    var = pd.DataFrame({"feature_id": a.var_names.astype(str),
                        "feature_name": a.var["gene_symbol"].astype(str).to_numpy()})
    donors = sorted(a.obs["donor"].astype(str).unique())
    role = {d: "train" for d in donors[:4]} | {d: "val" for d in donors[4:6]} | {
        d: "test" for d in donors[6:]}
    splits = {}
    for split in ("train", "val", "test"):
        sub = a[a.obs["donor"].astype(str).map(role).to_numpy() == split]
        obs = pd.DataFrame({
            "dataset_id": "kang", "donor_id": sub.obs["donor"].astype(str).to_numpy(),
            "assay": "10x 3' v2",
            "cell_type_ontology_term_id": [KANG_CL[c][0] for c in sub.obs["cell_type"]],
            "cell_type": [KANG_CL[c][1] for c in sub.obs["cell_type"]],
        })
        obs["tech_sample"] = "kang/" + obs["donor_id"]
        splits[split] = (sp.csr_matrix(sub.X), obs)
    write_store_from_arrays(out, var, splits)
    return out


@pytest.fixture(scope="module")
def work(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    store = _kang_store(shared_data, root / "shards")
    run = CliRunner().invoke(main, ["pretrain", "--method", "random_mask", "--shards",
                                    str(store), "--out", str(root / "pre"), "--max-steps", "60",
                                    "--hidden", "128,64,16", "--batch-size", "512",
                                    "--val-every", "30", "--device", "cpu", "--workers", "1"])
    assert run.exit_code == 0, run.output
    return {"root": root, "shards": store, "pre": root / "pre"}


def _ok(args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r


def test_celltype_from_pretrained_is_evaluated_beside_its_baselines(work):
    out = work["root"] / "ct"
    _ok(["finetune", "--task", "celltype", "--shards", work["shards"], "--init", work["pre"],
         "--out", out, "--max-steps", "120", *SMALL])
    card = RunDir(out).card
    assert card["task"] == "celltype" and card["init_method"] == "random_mask"
    assert card["init"] == str(work["pre"].resolve())
    assert (out / "var.parquet").is_file() and (out / "labels.parquet").is_file()
    report_path = work["root"] / "report" / "ct.json"
    r = _ok(["evaluate", "--run", out, "--shards", work["shards"], "--json", report_path,
             "--device", "cpu", "--workers", "1", "--batch-size", "2048", "--embedding-2d", "pca",
             "--pca-max-cells", "2048"])
    rep = json.loads(report_path.read_text())
    assert {role: s["name"] for role, s in rep["knn"].items()} == {
        "run": "finetune:celltype", "zero_shot": "zero-shot random_mask",
        "random_init": "random-init", "pca": "PCA-64"}
    for scores in [*rep["knn"].values(), rep["classifier"]]:
        assert 0 <= scores["plain"]["macro_f1"] <= 1
        # the hierarchy only ever turns a wrong prediction right
        assert scores["hierarchy_aware"]["micro_f1"] >= scores["plain"]["micro_f1"]
        assert set(scores["by_dataset"]) == {"kang"}
    assert rep["n_test_labelled"] == rep["knn"]["pca"]["plain"]["n_cells"]
    # held-out donors: PCA + kNN and the trained classifier both classify PBMCs well
    assert rep["knn"]["pca"]["plain"]["macro_f1"] > 0.6
    assert rep["classifier"]["plain"]["micro_f1"] > 0.8
    assert min(r["abundance"] for r in rep["knn"]["pca"]["per_class"]) > 0
    md = (work["root"] / "report" / "ct.md").read_text()
    assert "macro F1 (hierarchy)" in md and "zero-shot random_mask" in md
    assert (work["root"] / "report" / "ct-embedding.png").stat().st_size > 10_000
    assert (work["root"] / "report" / "ct-f1-vs-abundance.png").is_file()
    assert "classifier head" in r.output
    work["celltype_run"] = out


def test_embed_writes_embeddings_and_predicted_types(work, shared_data):
    run = work.get("celltype_run")
    if run is None:
        pytest.skip("needs the celltype run of the previous test")
    out = work["root"] / "embedded.h5ad"
    r = _ok(["embed", "--run", run, "--h5ad",
             shared_data / "h5ad" / "kang_ctrlstim_muscat_example.h5ad", "--out", out])
    assert "of 1287 model genes matched" in r.output
    a = ad.read_h5ad(out)
    assert a.obsm["X_ssl_census"].shape == (a.n_obs, 16)
    assert set(a.obs["ssl_census_cell_type"]) <= {v[1] for v in KANG_CL.values()}
    assert a.uns["ssl_census"]["genes_matched"] > 1000
    # the same cell types as annotated, for most of the stimulated-and-control cells
    names = {k: v[1] for k, v in KANG_CL.items()}
    truth = a.obs["cell_type"].astype(str).map(names)
    assert (truth == a.obs["ssl_census_cell_type"]).mean() > 0.6


def test_unseen_h5ad_is_evaluated_leave_one_donor_out(work, shared_data):
    path = work["root"] / "unseen.json"
    _ok(["evaluate", "--run", work["pre"], "--h5ad",
         shared_data / "h5ad" / "kang_ctrlstim_muscat_example.h5ad", "--label-key",
         "cell_type", "--json", path, "--no-plots"])
    rep = json.loads(path.read_text())
    assert rep["genes_matched"] > 1000 and rep["protocol"].startswith("5-fold")
    assert rep["knn"]["pca"]["plain"]["macro_f1"] > 0.6


def test_unseen_h5ad_is_classified_against_the_reference_stores_validation_cells(
        work, shared_data, monkeypatch):
    """The paper's unseen-data protocol: stimulated cells are the queries, the store's
    validation (control) cells the kNN reference, never the other stimulated cells."""
    run = work.get("celltype_run")
    if run is None:
        pytest.skip("needs the celltype run of an earlier test")
    stim = ad.read_h5ad(shared_data / "h5ad" / "kang_ctrlstim_muscat_example.h5ad")
    stim = stim[stim.obs["condition"].astype(str) == "stim"].copy()
    stim.obs["cl"] = [KANG_CL[c][0] for c in stim.obs["cell_type"].astype(str)]
    h5ad = work["root"] / "stim.h5ad"
    stim.write_h5ad(h5ad)
    from ssl_census.evaluation import report as report_module

    calls = []
    original = report_module.knn_classify

    def spy(reference, reference_labels, query, **kw):
        calls.append((len(reference), len(query)))
        return original(reference, reference_labels, query, **kw)

    monkeypatch.setattr(report_module, "knn_classify", spy)
    path = work["root"] / "stim.json"
    _ok(["evaluate", "--run", run, "--h5ad", h5ad, "--label-key", "cl", "--shards",
         work["shards"], "--json", path, "--no-plots", "--workers", "1", "--batch-size", "2048",
         "--pca-max-cells", "2048"])
    rep = json.loads(path.read_text())
    from ssl_census.shards.store import open_shards

    _, val_obs = open_shards(work["shards"]).split("val")
    n_val = int((val_obs["cell_type_code"] >= 0).sum())
    assert rep["n_reference"] == n_val and rep["n_query"] == stim.n_obs
    assert rep["reference"] == str(work["shards"]) and "validation cells" in rep["protocol"]
    assert calls and all(c == (n_val, stim.n_obs) for c in calls)  # every embedding
    assert set(rep["knn"]) == {"run", "zero_shot", "random_init", "pca"}
    for scores in [*rep["knn"].values(), rep["classifier"]["scored_on_known_labels"]]:
        assert scores["hierarchy_aware"]["micro_f1"] >= scores["plain"]["micro_f1"]
    assert rep["knn"]["pca"]["plain"]["macro_f1"] > 0.5


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


def test_rna_to_protein_beats_predicting_the_mean(work, shared_data):
    out = work["root"] / "cite"
    r = _ok(["finetune", "--task", "cross_modality", "--init", "random", "--shards",
             work["shards"], "--h5ad", shared_data / "h5ad" / "pbmc10k_cite_totalvi.h5ad",
             "--out", out, "--max-epochs", "8", "--hidden", "128,64,16", "--batch-size", "256",
             "--val-every", "40", "--device", "cpu"])
    scores = json.loads((out / "cross_modality_scores.json").read_text())
    assert len(scores["targets"]) == 14 and scores["n_test_cells"] > 600
    assert scores["model"]["pearson"] > scores["mean_baseline"]["pearson"]
    assert scores["mse_model"] < scores["mse_mean_baseline"]
    assert "test_pearson" in r.output
    # the run reads the gene space of the store, so evaluate accepts it on that store
    assert RunDir(out).card["gene_list_sha256"] == RunDir(work["pre"]).card["gene_list_sha256"]


def test_bad_input_is_one_line_errors(work, shared_data, tmp_path):
    other = _kang_store(shared_data, tmp_path / "fewer_genes", genes=900)
    cases = [
        (["evaluate", "--run", work["pre"], "--shards", other], "another gene space"),
        (["finetune", "--task", "celltype", "--shards", other, "--init", work["pre"], "--out",
          tmp_path / "x"], "another gene space"),
        (["evaluate", "--run", work["pre"], "--h5ad",
          shared_data / "h5ad" / "zheng_sorted_mudan.h5ad", "--label-key", "celltype"],
         "no obs column 'celltype'"),
        (["evaluate", "--run", work["pre"], "--h5ad",
          shared_data / "h5ad" / "zheng_sorted_mudan.h5ad"], "needs --label-key"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(main, [str(a) for a in args])
        assert r.exit_code == 2, (args, r.output, r.exception)
        assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()
