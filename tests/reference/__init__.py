"""A second, deliberately plain implementation of the viewer rules, to test the engine by.

It reads each viewer's whole event list per rule and says what must fire and when, which
tag records they get and which follow-up. No timers and no state machine of the engine's
shape; it imports nothing from `stream.engine` but the rule files' schema and loader.
"""
