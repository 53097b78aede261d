import sys

from hbdaemon.cli import main

sys.exit(main())
