import sys

from loadtests.run import main

sys.exit(main())
