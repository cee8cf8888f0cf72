"""Applications behind the ``zoracle`` command line (demo, bench, defense, sol).

They use frameworks freely; the core never imports them. Imported as ``zoracle.apps.<name>``.
"""
