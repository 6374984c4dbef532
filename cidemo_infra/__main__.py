from cidemo_infra.cli import main

main()
