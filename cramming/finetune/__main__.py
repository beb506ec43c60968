from cramming.finetune.command import main

main()
