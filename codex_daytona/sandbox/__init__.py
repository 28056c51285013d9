"""Below the use cases: Daytona (`daytona_api`, the only module that talks to its SDK) and
what goes into a sandbox and comes out of it (the agent runtime, the home's shell commands,
the archives of push and pull, the preview link check). Imports only the leaf modules.
"""
