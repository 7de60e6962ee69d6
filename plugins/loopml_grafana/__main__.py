import sys

from loopml_grafana import main

sys.exit(main())
