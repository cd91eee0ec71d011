from lit_gen.cli import cli_main

cli_main()
