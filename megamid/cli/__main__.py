"""python -m megamid.cli COMMAND ...  (same as the megamid console command)"""

import sys

from megamid.cli import main

sys.exit(main())
