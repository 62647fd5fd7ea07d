"""The Databricks bundle, checked as far as it can be without Databricks:

- databricks.yml and resources/*.yml against the bundle JSON schema the Databricks CLI publishes
  (bundle/schema/jsonschema.json of databricks/cli), as written (``${var.*}`` references in place,
  which the schema allows) and with each target's variables resolved (typed values where a whole
  value is a reference);
- the job: six tasks in pipeline order, each a python_wheel_task calling a console script that the
  built wheel declares, with parameters that the script's own argument parsing turns into a valid
  Unity Catalog configuration; the clusters (Spark 4.0 runtime, a GPU cluster for train with legacy
  Keras and the Horovod init script);
- the wheel: built from setup.py as the bundle's artifact builds it, installed with ``--no-deps``
  into a fresh virtualenv, imported from there (every module) and its console scripts run.

What this does not prove: that Databricks accepts the job (``databricks bundle validate`` talks to a
workspace), that the runtime's libraries agree with the pins, that the init script builds Horovod.

The schema is fetched material and stays out of this repository: it is read from
``$RECSPARK_BUNDLE_SCHEMA`` or else ``../shared/databricks-cli/jsonschema.json`` beside the checkout
(with its LICENSE, NOTICE and SOURCE, which names the commit it came from).
"""
from __future__ import annotations

import configparser
import copy
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from recspark.entrypoints import CONSOLE_SCRIPTS, pipeline_args
from recspark.utils.jobs import job_parser, parse_job_args

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(os.environ.get("RECSPARK_BUNDLE_SCHEMA", ROOT.parent / "shared" / "databricks-cli" / "jsonschema.json"))
STAGES = ["ingest", "prepare", "features", "train", "evaluate", "score"]
# What the CLI fills in for ${workspace.*} (a user jane.doe@example.com) and where the bundle's files
# are synced (${workspace.file_path}: this checkout stands in for them).
WORKSPACE = {"workspace.current_user.short_name": "jane_doe", "workspace.current_user.userName": "jane.doe@example.com",
             "workspace.file_path": str(ROOT)}
REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.-]*)\}")


def bundle_files() -> dict[str, Any]:
    """databricks.yml and the files its ``include`` globs name, parsed."""
    root = yaml.safe_load((ROOT / "databricks.yml").read_text())
    files = {"databricks.yml": root}
    for pattern in root["include"]:
        for path in sorted(ROOT.glob(pattern)):
            files[str(path.relative_to(ROOT))] = yaml.safe_load(path.read_text())
    return files


def merged_bundle() -> dict[str, Any]:
    """The included files' resources merged into databricks.yml's (the CLI's merge, for jobs)."""
    files = bundle_files()
    bundle = copy.deepcopy(files.pop("databricks.yml"))
    for document in files.values():
        for kind, resources in document.get("resources", {}).items():
            bundle.setdefault("resources", {}).setdefault(kind, {}).update(resources)
    return bundle


def python_pattern(pattern: str) -> str:
    """The schema's patterns use Go's Unicode classes: ``\\p{L}`` (a letter) and ``\\p{N}`` (a
    number), which Python's re lacks. ``[^\\W\\d_]`` is a letter, ``[^\\W_]`` a letter or digit."""
    converted = pattern.replace(r"[\p{L}\p{N}]", r"[^\W_]").replace(r"\p{L}", r"[^\W\d_]")
    assert r"\p{" not in converted, f"a Unicode class this test does not translate: {pattern}"
    return converted


def schema_validator() -> jsonschema.protocols.Validator:
    if not SCHEMA.is_file():
        # The schema is the Databricks CLI's file, not ours to commit: it is read from the shared folder
        # beside the checkout. Without it only the schema checks stop; every other bundle test runs.
        pytest.skip(f"no bundle schema at {SCHEMA}: put bundle/schema/jsonschema.json of github.com/databricks/cli "
                    "there (with its LICENSE), or point RECSPARK_BUNDLE_SCHEMA at it")

    def pattern(validator: Any, value: str, instance: Any, schema: dict) -> Any:
        if validator.is_type(instance, "string") and not re.search(python_pattern(value), instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {value!r}")

    schema = json.loads(SCHEMA.read_text())
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": pattern})(schema)


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    """Every failed check as ``path: message``; a failed oneOf (every level of the schema is one: the
    value or a ``${...}`` reference) is replaced by the failures of its branches."""
    def leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
        return [leaf for child in error.context for leaf in leaves(child)] if error.context else [error]

    found = [leaf for error in validator.iter_errors(document) for leaf in leaves(error)]
    return sorted(f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in found)


def target_variables(bundle: dict, target: str, given: dict | None = None) -> dict[str, Any]:
    """Each variable's value in ``target``: its default, the target's value, then ``given`` (--var)."""
    values = {name: spec["default"] for name, spec in bundle["variables"].items() if "default" in spec}
    values.update((bundle["targets"][target] or {}).get("variables", {}))
    values.update(given or {})
    return values


def resolve(node: Any, values: dict[str, Any]) -> Any:
    """``node`` with every ``${var.x}`` and ``${workspace.*}`` replaced; a string that is one
    reference becomes the value itself (an int stays an int), as the CLI does."""
    lookup = {**{f"var.{name}": value for name, value in values.items()}, **WORKSPACE}
    if isinstance(node, dict):
        return {key: resolve(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, values) for value in node]
    if not isinstance(node, str):
        return node
    whole = REFERENCE.fullmatch(node)
    if whole and whole.group(1) in lookup:
        return resolve(lookup[whole.group(1)], values)
    resolved = REFERENCE.sub(lambda m: str(lookup.get(m.group(1), m.group(0))), node)
    return resolve(resolved, values) if resolved != node else resolved


def resolved_bundle(target: str, given: dict | None = None) -> dict[str, Any]:
    bundle = merged_bundle()
    return resolve(bundle, target_variables(bundle, target, given))


PROD = {"alert_email": "recspark-team@example.com"}  # prod has no default: given at deploy


def job(bundle: dict) -> dict:
    return bundle["resources"]["jobs"]["recspark_pipeline"]


# -- the schema ---------------------------------------------------------------------------------


def test_every_bundle_file_matches_the_cli_schema() -> None:
    validator = schema_validator()
    files = bundle_files()
    assert list(files) == ["databricks.yml", "resources/recspark.job.yml"]
    for name, document in files.items():
        assert schema_errors(validator, document) == [], name


@pytest.mark.parametrize("target, given", [("dev", None), ("prod", PROD)])
def test_the_resolved_bundle_matches_the_cli_schema(target: str, given: dict | None) -> None:
    bundle = resolved_bundle(target, given)
    assert schema_errors(schema_validator(), bundle) == []
    unresolved = set(REFERENCE.findall(json.dumps(bundle))) - {"bundle.name", "bundle.target"}
    assert unresolved == set(), unresolved


def test_the_schema_check_catches_a_broken_task() -> None:
    """The same check fails on what the CLI would refuse: a wheel task without its entry point, an
    unknown key, a string where a number belongs."""
    document = copy.deepcopy(bundle_files()["resources/recspark.job.yml"])
    spec = job(document)
    del spec["tasks"][0]["python_wheel_task"]["entry_point"]
    spec["tasks"][1]["python_wheel_task"]["entry"] = "recspark-prepare"
    spec["job_clusters"][0]["new_cluster"]["num_workers"] = "two"
    errors = "\n".join(schema_errors(schema_validator(), document))
    assert "'entry_point' is a required property" in errors
    assert "'entry' was unexpected" in errors
    assert "num_workers" in errors


def test_every_variable_is_declared_used_and_set() -> None:
    bundle = merged_bundle()
    used = {ref.split(".", 1)[1] for ref in REFERENCE.findall(json.dumps(bundle)) if ref.startswith("var.")}
    assert used == set(bundle["variables"])
    assert set(target_variables(bundle, "dev")) == set(bundle["variables"])
    assert set(bundle["variables"]) - set(target_variables(bundle, "prod")) == set(PROD)


# -- the job ------------------------------------------------------------------------------------


def test_the_job_runs_the_stages_in_order_on_the_right_clusters() -> None:
    spec = job(resolved_bundle("dev"))
    tasks = spec["tasks"]
    assert [task["task_key"] for task in tasks] == STAGES
    for before, task in zip([None, *STAGES], tasks):
        assert task.get("depends_on", []) == ([{"task_key": before}] if before else [])
        assert task["job_cluster_key"] == ("gpu" if task["task_key"] == "train" else "cpu")
        assert task["libraries"] == [{"whl": "../dist/*.whl"}]  # the artifact's wheel, relative to resources/
    assert spec["schedule"]["quartz_cron_expression"] and spec["email_notifications"]["on_failure"] == ["jane.doe@example.com"]
    clusters = {cluster["job_cluster_key"]: cluster["new_cluster"] for cluster in spec["job_clusters"]}
    # Databricks Runtime 17.3 LTS is Spark 4.0, the Spark of the pinned pyspark.
    assert importlib.metadata.version("pyspark").startswith("4.0.")
    assert clusters["cpu"]["spark_version"].startswith("17.3.x-cpu-ml-")
    assert clusters["gpu"]["spark_version"].startswith("17.3.x-gpu-ml-")
    assert clusters["gpu"]["node_type_id"] == "g4dn.xlarge"
    assert clusters["gpu"]["spark_env_vars"]["RECSPARK_HOROVOD"] == "1"
    assert clusters["gpu"]["spark_conf"]["spark.task.resource.gpu.amount"] == "1"
    for cluster in clusters.values():
        assert cluster["spark_env_vars"]["TF_USE_LEGACY_KERAS"] == "1"
        script = Path(cluster["init_scripts"][0]["workspace"]["destination"])
        assert script.is_file() and Path(cluster["spark_env_vars"]["RECSPARK_TOOLS"]) == script.parent
    assert clusters["gpu"]["num_workers"] == 2


def test_the_init_script_installs_the_pinned_stack_and_the_patched_horovod() -> None:
    script = (ROOT / "tools" / "databricks_init.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "tools" / "databricks_init.sh")]).returncode == 0
    # The pins and the Horovod version are read from the files `make setup` uses, not repeated.
    assert '"$TOOLS/../requirements.txt"' in script and '"$TOOLS/setup.sh"' in script
    assert '"$TOOLS/patch_horovod.py"' in script
    pins = re.findall(r"^(tensorflow|tf-keras|petastorm)==", (ROOT / "requirements.txt").read_text(), re.M)
    assert sorted(pins) == ["petastorm", "tensorflow", "tf-keras"]
    assert re.search(r"^HOROVOD_VERSION=\S+$", (ROOT / "tools" / "setup.sh").read_text(), re.M)


@pytest.mark.parametrize("target, given", [("dev", None), ("prod", PROD)])
def test_every_task_gets_the_parameters_its_entry_point_needs(target: str, given: dict | None) -> None:
    """Each task's parameters, through its console script's own argument parsing (the one every job
    shares), give the Unity Catalog configuration of the target: catalog tables, files on the volume."""
    bundle = resolved_bundle(target, given)
    values = target_variables(merged_bundle(), target, given)
    catalog, schema, volume = values["catalog"], resolve(values["schema"], values), values["volume"]
    for task in job(bundle)["tasks"]:
        wheel_task = task["python_wheel_task"]
        script = wheel_task["entry_point"]
        assert script == f"recspark-{task['task_key']}"
        config, args = parse_job_args(job_parser(script), wheel_task["parameters"])
        assert not args.verbose
        assert (config.paths.catalog, config.paths.schema, config.dataset.name) == (catalog, schema, values["dataset"])
        assert config.table_path("gold", "item_vocab") == f"{catalog}.{schema}.gold_item_vocab"
        for folder in (config.paths.lakehouse, config.paths.reports, config.paths.checkpoints):
            assert folder.startswith(f"/Volumes/{catalog}/{schema}/{volume}/")
        assert config.petastorm_cache_url.startswith(f"file:///Volumes/{catalog}/{schema}/{volume}/")
        assert config.train.num_proc == values["gpu_workers"]  # one Horovod rank per GPU worker
        assert config.privacy.secret_scope  # prepare's pseudonym key comes from the secret scope


# -- the wheel ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel as the bundle's artifact builds it (``python setup.py bdist_wheel``), from a copy
    of setup.py and the package, so the checkout gets no build/ or egg-info of it."""
    work = tmp_path_factory.mktemp("wheel")
    shutil.copy(ROOT / "setup.py", work)
    shutil.copytree(ROOT / "recspark", work / "recspark", ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "setup.py", "-q", "bdist_wheel", "-d", str(work / "dist")], cwd=work,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (built,) = (work / "dist").glob("recspark-*.whl")
    return built


def wheel_entry_points(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(name).decode())
    return dict(parser["console_scripts"])


def test_the_wheel_declares_every_console_script_the_bundle_calls(wheel: Path) -> None:
    scripts = wheel_entry_points(wheel)
    assert scripts == {name: f"recspark.entrypoints:{fn.__name__}" for name, fn in CONSOLE_SCRIPTS.items()}
    for task in job(merged_bundle())["tasks"]:
        assert task["python_wheel_task"]["package_name"] == "recspark" == wheel.name.split("-")[0]
        assert task["python_wheel_task"]["entry_point"] in scripts


@pytest.mark.parametrize("script", list(CONSOLE_SCRIPTS))
def test_every_console_script_runs_with_help(wheel: Path, script: str, capsys: pytest.CaptureFixture) -> None:
    """Loaded as the wheel's metadata names it; --help exits 0 before any Spark starts."""
    main = importlib.metadata.EntryPoint(script, wheel_entry_points(wheel)[script], "console_scripts").load()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--conf-file" in text and "--set" in text
    assert ("--user-id" in text) == (script == "recspark-forget")
    assert ("--stages" in text) == (script == "recspark-pipeline")


def test_pipeline_script_takes_the_tasks_parameters() -> None:
    parameters = job(resolved_bundle("dev"))["tasks"][0]["python_wheel_task"]["parameters"]
    config, _, stages = pipeline_args([*parameters, "--from", "train"])
    assert config.uses_catalog and stages == ["train", "evaluate", "score", "summary"]


def test_the_wheel_imports_and_runs_in_a_clean_virtualenv(wheel: Path, tmp_path: Path) -> None:
    """Installed with --no-deps into a new virtualenv whose dependencies are this venv's packages
    (a .pth line after its own site-packages; the checkout is not on its path): every module of the
    package imports from the installed wheel, and a console script runs. Proves the wheel holds the
    whole package and its entry points; not that pip would resolve its dependencies."""
    import sysconfig
    import venv

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    clean = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, env=clean)
    assert install.returncode == 0, install.stderr
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_recspark_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    check = ("import importlib, pkgutil, recspark\n"
             "names = [m.name for m in pkgutil.walk_packages(recspark.__path__, 'recspark.')]\n"
             "for name in names: importlib.import_module(name)\n"
             "print(recspark.__file__); print(len(names))")
    run = subprocess.run([str(python), "-c", check], capture_output=True, text=True, cwd=tmp_path,
                         env={**clean, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-4000:]
    location, modules = run.stdout.split()[-2:]
    assert Path(location).is_relative_to(site)
    package_modules = [p for p in (ROOT / "recspark").rglob("*.py") if p.name != "__init__.py"]
    assert int(modules) >= len(package_modules)
    script = subprocess.run([str(env_dir / "bin" / "recspark-ingest"), "--help"], capture_output=True, text=True,
                            cwd=tmp_path, env=clean)
    assert script.returncode == 0 and "--conf-file" in script.stdout, script.stderr[-2000:]
