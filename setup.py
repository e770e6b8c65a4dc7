"""Packaging for rllib-muzero: MuZero as an RLlib algorithm (old API stack), in PyTorch."""

from setuptools import find_packages, setup

setup(
    name="rllib-muzero",
    version="0.1.0",
    description="MuZero (Schrittwieser et al. 2020) as a first-class Ray RLlib algorithm, in PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rllib_muzero", "rllib_muzero.*"]),
    package_data={"rllib_muzero": ["py.typed"]},
    install_requires=[
        # torch is deliberately unpinned here: install the build you want first (README: CPU wheel for CI).
        "torch>=2.1",
        "ray[rllib,tune]==2.60.0",
        "gymnasium>=1.0,<1.3",
        "numpy>=1.24",
        "numba>=0.60",
        "pyyaml>=6",
        "psutil>=5",
        "threadpoolctl>=3.1",  # the numpy search inference keeps numpy's BLAS at torch's thread count
    ],
    extras_require={
        "test": ["pytest>=8", "ruff", "tensorboard", "gymnasium[atari]>=1.0,<1.3", "box2d==2.3.10", "pygame>=2.1.3",
                 "matplotlib>=3.7", "pillow>=10", "minatar>=1.0.15,<1.1"],
        # `rllib-muzero evaluate`: plots (matplotlib, Agg), GIFs (Pillow), rgb rendering of classic-control (pygame).
        "viz": ["matplotlib>=3.7", "pillow>=10", "pygame>=2.1.3"],
        # Atari RAM games (Pong/Breakout tuned examples): ale-py ships the ROMs.
        "atari": ["gymnasium[atari]>=1.0,<1.3"],
        # LunarLander: gymnasium[box2d] pins box2d-py, which fails to build; box2d 2.3.10 has wheels.
        "box2d": ["box2d==2.3.10", "pygame>=2.1.3"],
        # MinAtar games (`MinAtar/Breakout-v1`, ...): pure Python; adds seaborn and pytz (matplotlib, pandas and
        # scipy come with Ray RLlib already). The wrapper (rllib_muzero.envs.MinAtarEnv) relies on 1.0's internals.
        "minatar": ["minatar>=1.0.15,<1.1"],
    },
    entry_points={"console_scripts": ["rllib-muzero=rllib_muzero.cli:main"]},
)
