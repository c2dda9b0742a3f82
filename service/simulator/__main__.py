from service.simulator.cli import main

main()
