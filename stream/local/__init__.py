"""The lab: the embedded tansu broker and valkey server as child processes (`embedded`),
the runner behind `up` and `demo` that starts workers and a gateway on them (`runner`,
`demo`), and the broadcast simulator: a pure show plan (`showplan`) and its HTTP sender
(`sender`).

Imports: anything below it; only `stream.cli` imports this folder.
"""
