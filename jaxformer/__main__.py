import sys

from jaxformer.cli import main

sys.exit(main())
