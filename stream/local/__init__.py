"""The lab: the embedded tansu broker and valkey server as child processes (`embedded`
over `children`; an embedded Redis Cluster in `cluster`), the runner behind `up` and
`demo` that starts workers and a gateway on them (`runner`, `demo`; where it runs, in
`state`), and the broadcast simulator: a pure show plan (`showplan`) and its HTTP
sender (`sender`). Behind the command line's other commands: a room's input events read
back (`eventlog`), `rules check` and `rules backtest` (`rulecheck`, `backtest`), pick
lists and follow-ups (`aftershow`), known failures as one line (`errors`) and the
commands as the user types them (`invoke`). For `make`: the viewer engine compiled with
mypyc (`compiler`).

Imports: anything below it; only `stream.cli` imports this folder.
"""
