import sys

from mnasnet.cli import main

sys.exit(main())
