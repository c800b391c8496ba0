"""Scenario scripts: rehearse bounces and pin behaviour down, in-process or over the wire.

:mod:`kumo.scenario.format` reads the TOML format into step values, and
:mod:`kumo.scenario.expect` compares what a server shows with what a step expects; both
are pure. :mod:`kumo.scenario.runner` runs the steps against a target (an in-process
engine on virtual time, or a live server), and :mod:`kumo.scenario.report` renders the
results as text and JUnit XML. For the mail path, the in-process destinations are
simulated by :mod:`kumo.scenario.destinations` and the live ones are Postfix's smtp-sink
(:mod:`kumo.scenario.smtp_sink`); :mod:`kumo.scenario.smtp_submission` sends a
scenario's messages over SMTP with kumo's own client.
"""
