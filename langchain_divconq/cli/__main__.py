import sys

from langchain_divconq.cli.router import main

sys.exit(main())
