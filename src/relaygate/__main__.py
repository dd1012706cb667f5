"""python -m relaygate"""

from relaygate.cli.main import main

main()
