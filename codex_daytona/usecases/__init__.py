"""The use cases: what each command does, over a `Context` and its `Box`es (context.py).

They never print: they report events through the context and return results. They import
`codex_daytona.sandbox` and the leaf modules (errors, events, settings, state), never a front door.
"""
