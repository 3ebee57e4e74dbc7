from slmzoo.cli.main import main

main()
