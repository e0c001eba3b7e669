"""The ``divconq`` command line: argparse only; each command calls into its part of the library.

``python -m langchain_divconq.cli`` and the ``divconq`` script both run :func:`main`.
"""

from langchain_divconq.cli.args import add_data_dir_argument, add_model_arguments, build_chain
from langchain_divconq.cli.router import main

__all__ = ["add_data_dir_argument", "add_model_arguments", "build_chain", "main"]
