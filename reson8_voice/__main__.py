"""``python -m reson8_voice``: the same as the ``reson8-voice`` command."""

import sys

from .cli import main

sys.exit(main())
