from sdmvae_cli.cli import main

main()
