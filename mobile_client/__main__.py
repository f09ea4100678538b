import sys

from mobile_client.cli import main

sys.exit(main())
