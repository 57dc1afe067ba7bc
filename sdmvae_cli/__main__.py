from sdmvae_cli.cli.app import main

main()
