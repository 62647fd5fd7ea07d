# recspark: `make setup`, `make test`, `make run [DATASET=ml-1m]`.
PY := .venv/bin/python
DATASET ?= completejourney
DATASET_CONF := $(wildcard conf/datasets/$(DATASET).yaml)
# A data-set layer names its own data set (and variant); without one, DATASET is the data set's name.
CONF := --conf-file conf/local.yaml $(if $(DATASET_CONF),--conf-file $(DATASET_CONF),--set dataset.name=$(DATASET)) $(foreach s,$(SET),--set $(s))
STAGES := ingest prepare features train evaluate score
export TF_USE_LEGACY_KERAS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup test run $(STAGES) summary bench clean

setup:
	bash tools/setup.sh

test:
	$(PY) -m pytest tests

run: $(STAGES) summary

$(STAGES):
	$(PY) jobs/$@.py $(CONF)

summary:
	$(PY) jobs/summary.py $(CONF)

bench:
	$(PY) bench/etl.py
	$(PY) bench/train.py

clean:
	rm -rf lakehouse/$(DATASET) reports/$(DATASET) checkpoints/$(DATASET)
