"""Runs the agent: `python DIR`, DIR being this package's directory (Layout.agent in the sandbox).

Python then runs this file alone, as a script, with DIR first on sys.path; the package is
imported from DIR's parent instead, so that no module of it can stand in for one of the
standard library's.
"""

import os
import sys

if not __package__:
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from agent_bundle.agent import main

sys.exit(main())
