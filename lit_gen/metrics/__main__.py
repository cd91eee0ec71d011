from lit_gen.metrics.fid import main

main()
