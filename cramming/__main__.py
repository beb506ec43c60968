from cramming.pretrain import main

main()
