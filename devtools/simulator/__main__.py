from devtools.simulator.cli import main

main()
