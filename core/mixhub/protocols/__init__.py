"""Protocols: the loops that drive a ``Run`` (and through it the ``Session``'s step).

* ``supervised``: epochs over a training set, validation, best checkpoint, final test;
* ``continual``: an online class-incremental task stream with a replay buffer;
* ``testtime``: evaluation on test streams with online adaptation.

A protocol imports the run and the services below it, never ``mixhub.trainer`` (which picks
the protocol) nor another protocol.
"""
