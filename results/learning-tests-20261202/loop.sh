#!/bin/bash
# The learning tests, 10 runs in a row, each in a fresh pytest process (fresh seeds state).
cd /work/t14
TESTS="tests/test_models.py::test_sasrec_learns_the_successor_task tests/test_repeatnet.py::test_repeatnet_learns_to_rebuy_and_round_trips tests/test_towers_dnn.py::test_towers_learn_the_attribute_task tests/test_towers_dnn.py::test_dnn_learns_the_attribute_task tests/test_training.py::test_two_rank_training_agrees_learns_and_exports tests/test_probability_eval.py::test_report_of_the_learned_task_and_threshold_from_validation"
for i in $(seq 1 10); do
  start=$(date +%s)
  PYTHONPATH=/work/t14 .venv/bin/python -m pytest -q -p no:cacheprovider $TESTS 2>&1 | grep -E "passed|failed|FAILED" | sed "s/^/run $i: /"
  echo "run $i: $(( $(date +%s) - start )) s"
done
