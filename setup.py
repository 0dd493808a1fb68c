"""tfmsr: TensorFlow/Keras trainer for multi-scenario recommendation."""
from setuptools import find_packages, setup

# The pinned stack and the reason for each pin: ../shared/DESIGN.md section 1.
INSTALL_REQUIRES = [
    "tensorflow==2.16.2",
    "tf-keras==2.16.0",
    "tensorflow-recommenders==0.7.3",
    "tensorflow-io==0.37.1",
    "tensorflow-serving-api==2.16.1",
    "numpy<2",
    "pandas",
    "pyarrow<18",
    "pyyaml",
    "matplotlib",
]

setup(
    name="tfmsr",
    version="0.1.0",
    description="Industrial TensorFlow/Keras trainer for multi-scenario recommendation",
    packages=find_packages(include=["tfmsr", "tfmsr.*"]),  # pipelines/ are scripts of a checkout, not shipped
    package_data={"tfmsr": ["configs/*.yaml", "configs/data/*.yaml"]},  # `--config NAME` finds them installed
    python_requires=">=3.9,<3.13",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest", "pytest-timeout"]},
    entry_points={"console_scripts": ["tfmsr=tfmsr.cli:main"]},
)
