from dnswatch.cli import main

main()
