from workbench.entry import main

main()
