from cramming.glue.run import main

main()
