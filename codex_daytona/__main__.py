from codex_daytona.cli import main

main()
