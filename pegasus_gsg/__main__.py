import sys

from pegasus_gsg.cli import main

sys.exit(main())
