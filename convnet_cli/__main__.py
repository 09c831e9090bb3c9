from convnet_cli.cli import main

main()
