from lit_gen.main import cli_main

cli_main()
