"""`python -m tallygate.deploy.cloudrun`: the same as `tallygate deploy cloudrun`."""

import sys

from . import main

sys.exit(main())
