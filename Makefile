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

.PHONY: install test demo shards bench lint reproduce

# torch first and pinned: an open torch requirement pulls gigabytes of CUDA packages.
install: .installed
.installed: pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch .installed

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider

lint: install
	$(PYTHON) -m ruff check ssl_census tests

demo: install
	$(PYTHON) -m ssl_census.demo --work $(WORK)/demo

shards: install
ifeq ($(CENSUS_URI),)
	ssl-census shards build --census-version $(CENSUS_VERSION) --config $(SHARDS_CONFIG) --out $(SHARDS_OUT)
else
	ssl-census shards build --census-uri $(CENSUS_URI) --config $(SHARDS_CONFIG) --out $(SHARDS_OUT)
endif

bench: install
	ssl-census bench shards --work $(WORK)/bench
	ssl-census bench loader --shards $(WORK)/bench/shards --json $(WORK)/bench/loader.json

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
reproduce: install
	ssl-census reproduce --config $(REPRODUCE_CONFIG) --work $(WORK)/reproduce --page docs/results.md $(if $(CENSUS_URI),--census-uri $(CENSUS_URI),)
