from cidemo_infra.bench.run import main

main()
