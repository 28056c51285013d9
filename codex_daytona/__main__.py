from codex_daytona.launcher import main

main()
