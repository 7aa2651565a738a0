# ssl-census: the two commands that do everything on a fresh machine are `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
WORK ?= work
CENSUS_VERSION ?= 2023-05-15
CENSUS_URI ?=
SHARDS_CONFIG ?= configs/shards/sctab-2023-05-15.toml
SHARDS_OUT ?= $(WORK)/shards
REPRODUCE_CONFIG ?= paper
export SSL_CENSUS_DATA ?= $(abspath ../shared/data)

.PHONY: install test demo shards bench lint reproduce wheel-check

# torch first and pinned: an open torch requirement pulls gigabytes of CUDA packages. The scvi
# extra (scvi-tools, Lightning) accepts the torch already there, so it pulls no other torch.
install: .installed
.installed: pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,scvi]"
	touch .installed

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider

# The package as a user gets it: a wheel installed into a fresh virtual environment (system
# site-packages visible, so torch and the other dependencies are not downloaded again), run
# from a folder outside this tree on a tiny synthetic store: the presets must come from the
# wheel. --no-index: every dependency must already be satisfied; --without-pip: the venv's own
# (older) setuptools would hide the one torch requires. build/ goes first: setuptools packs whatever a stale build/lib still holds.
WHEEL_CHECK ?= $(or $(TMPDIR),/tmp)/ssl-census-wheel-check
wheel-check: install
	rm -rf build $(WHEEL_CHECK) && mkdir -p $(WHEEL_CHECK)
	$(PIP) wheel -q --no-deps --no-build-isolation . -w $(WHEEL_CHECK)/dist
	$(PYTHON) -m venv --system-site-packages --without-pip $(WHEEL_CHECK)/venv
	$(PIP) --python $(WHEEL_CHECK)/venv/bin/python install -q --no-index $(WHEEL_CHECK)/dist/*.whl
	cd $(WHEEL_CHECK) && env -u PYTHONPATH sh -e -c ' \
		venv/bin/python -c "import ssl_census, sys; sys.exit(\"$(WHEEL_CHECK)/venv/\" not in ssl_census.__file__)"; \
		venv/bin/ssl-census census synth --cells 2000 --out census > /dev/null; \
		venv/bin/ssl-census shards build --census-uri census --config synthetic --out shards \
			--workers 1 $(if $(GENE_LIST),--gene-list $(abspath $(GENE_LIST))) > /dev/null; \
		venv/bin/ssl-census pretrain --method random_mask --shards shards --out run \
			--hidden 64,16 --batch-size 128 --max-steps 4 --val-every 2 --val-batches 1 --workers 1'
	rm -rf $(WHEEL_CHECK)

lint: install
	$(PYTHON) -m ruff check ssl_census tests

# The main job on the embedded default: a synthetic census -> shards -> pretrain -> finetune ->
# evaluate, sized for a 2-core CPU (a few minutes); prints the evaluation table at the end.
DEMO ?= $(WORK)/demo
DEMO_CELLS ?= 20000
DEMO_STEPS ?= 150
GENE_LIST ?= $(wildcard $(SSL_CENSUS_DATA)/genes/scTab_features.parquet)
demo: install
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	ssl-census census synth --cells $(DEMO_CELLS) --out $(DEMO)/census
	ssl-census shards build --census-uri $(DEMO)/census --config synthetic --out $(DEMO)/shards \
		$(if $(GENE_LIST),--gene-list $(GENE_LIST))
	ssl-census pretrain --method random_mask --shards $(DEMO)/shards --out $(DEMO)/random_mask \
		--batch-size 512 --max-steps $(DEMO_STEPS) --val-every 50
	ssl-census finetune --task celltype --shards $(DEMO)/shards --init $(DEMO)/random_mask \
		--out $(DEMO)/celltype --batch-size 512 --max-steps $(DEMO_STEPS) --val-every 50
	ssl-census evaluate --run $(DEMO)/celltype --shards $(DEMO)/shards --embedding-2d pca \
		--json $(DEMO)/celltype/evaluation.json
	@cat $(DEMO)/celltype/evaluation.md

shards: install
ifeq ($(CENSUS_URI),)
	ssl-census shards build --census-version $(CENSUS_VERSION) --config $(SHARDS_CONFIG) --out $(SHARDS_OUT)
else
	ssl-census shards build --census-uri $(CENSUS_URI) --config $(SHARDS_CONFIG) --out $(SHARDS_OUT)
endif

# Issue targets: the shard build on a 500,000-cell synthetic census beside a plain census read;
# the loader on a 1,000,000-cell store beside annbatch+zarrs, scDataset, tiledbsoma-ml and a raw
# ceiling. Figures are printed and written as JSON under $(WORK)/bench.
bench: install
	$(PIP) install -q -e ".[bench]"
	ssl-census bench shards --work $(WORK)/bench --json $(WORK)/bench/shards.json
	ssl-census bench loader --shards $(WORK)/bench/store-1m --synthetic 1000000 \
		--census-uri $(WORK)/bench/census-synth-500000-s0 --json $(WORK)/bench/loader.json

# Scheduled rebuilds (docs/rebuilds.md; pipelines/ runs this weekly):
#   make rebuild REBUILD_ROOT=/data/ssl-census RELEASE=lts|latest|VERSION [RELEASE_DIRECTORY=...]
REBUILD_ROOT ?=
RELEASE ?= latest
RELEASE_DIRECTORY ?=
REBUILD_CONFIG ?= $(SHARDS_CONFIG)
REBUILD_GENE_LIST ?=
REBUILD_WORKERS ?= 2
.PHONY: rebuild
rebuild: install
	@test -n "$(REBUILD_ROOT)" || { echo "error: set REBUILD_ROOT to the storage folder of the builds" >&2; exit 2; }
	ssl-census rebuild --root "$(REBUILD_ROOT)" --release "$(RELEASE)" --config "$(REBUILD_CONFIG)" \
		--workers $(REBUILD_WORKERS) \
		$(if $(RELEASE_DIRECTORY),--directory "$(RELEASE_DIRECTORY)") \
		$(if $(REBUILD_GENE_LIST),--gene-list "$(REBUILD_GENE_LIST)")

# The paper's comparisons on the real local census (or CENSUS_URI=...); writes docs/results.md.
# The integration extra brings scib-metrics (and jax on the CPU) for the scIB scores.
reproduce: install
	$(PIP) install -q -e ".[integration]"
	ssl-census reproduce --config $(REPRODUCE_CONFIG) --work $(WORK)/reproduce --page docs/results.md $(if $(CENSUS_URI),--census-uri $(CENSUS_URI),)
