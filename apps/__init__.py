"""Applications behind the ``zoracle`` command line (demo, bench, defense, sol, plot).

They use frameworks freely; the core never imports them. Imported as ``zoracle.apps.<name>``.
"""
