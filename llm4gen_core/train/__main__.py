"""``python -m llm4gen_core.train`` (also under ``accelerate launch -m llm4gen_core.train``)."""
import sys

from .cli import main

sys.exit(main())
