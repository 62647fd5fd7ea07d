# recspark: `make setup`, `make test`, `make run [DATASET=ml-1m]`.
PY := .venv/bin/python
DATASET ?= completejourney
DATASET_CONF := $(wildcard conf/datasets/$(DATASET).yaml)
# A data-set layer names its own data set (and variant); without one, DATASET is the data set's name.
# LAYERS: more configuration files after the data set's (make compare adds conf/compare.yaml).
LAYERS ?=
# MASTER: spark.master, e.g. MASTER='local-cluster[2,1,4096]' (two executor JVMs; README "Running on a cluster").
MASTER ?=
CONF := --conf-file conf/local.yaml $(if $(DATASET_CONF),--conf-file $(DATASET_CONF),--set dataset.name=$(DATASET)) $(foreach f,$(LAYERS),--conf-file $(f)) $(if $(MASTER),--set 'spark.master=$(MASTER)') $(foreach s,$(SET),--set $(s))
STAGES := ingest prepare features train evaluate score
# VERBOSE=1: Spark's warnings and progress bars; FROM=<stage> / ONLY="<stage> ...": part of `make run`.
JOB_FLAGS := $(if $(VERBOSE),--verbose)
PIPELINE_FLAGS := $(JOB_FLAGS) $(if $(FROM),--from $(FROM)) $(if $(ONLY),--stages "$(ONLY)")
export TF_USE_LEGACY_KERAS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test run compare $(STAGES) summary forget bench bench-run clean loop feedback notebooks

setup:
	bash tools/setup.sh

test:
	$(PY) -m pytest tests

# Every stage in one Spark application (jobs/pipeline.py); `make <stage>` runs one on its own.
run:
	$(PY) jobs/pipeline.py $(CONF) $(PIPELINE_FLAGS)

# The full comparison behind the README's tables: the ablations and the other models beside the served one.
compare:
	$(MAKE) run LAYERS="conf/compare.yaml $(LAYERS)"

$(STAGES):
	$(PY) jobs/$@.py $(CONF) $(JOB_FLAGS)

summary:
	$(PY) jobs/summary.py $(CONF) $(JOB_FLAGS)

# The closed loop replayed on DATASET's last weeks (README "Closed loop"): reports/<dataset>/loop/.
loop:
	$(PY) jobs/loop.py $(CONF) --conf-file conf/loop.yaml $(JOB_FLAGS)

# The notebooks (notebooks/) executed headless on DATASET's latest run: reports/<dataset>/notebooks/.
notebooks:
	$(PY) jobs/notebooks.py $(CONF)

# Feedback files (SET="feedback.path=...") into bronze, silver feedback, response events, served metrics.
feedback:
	$(PY) jobs/feedback.py $(CONF) $(JOB_FLAGS)

# Erase people from every table of DATASET (README "Erasure"): make forget IDS="1001 1002" or IDS_FILE=ids.txt
forget:
	$(PY) jobs/forget.py $(CONF) $(foreach id,$(IDS),--user-id $(id)) $(if $(IDS_FILE),--ids-file $(IDS_FILE))

bench:
	$(PY) bench/etl.py
	$(PY) bench/train.py

# make run on DATASET from an empty lakehouse (a temporary folder), stage by stage, against raw -> Delta (bench/run.py).
bench-run:
	$(PY) bench/run.py --dataset $(DATASET) $(foreach s,$(SET),--set $(s))

clean:
	rm -rf lakehouse/$(DATASET) reports/$(DATASET) checkpoints/$(DATASET)
