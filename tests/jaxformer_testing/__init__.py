"""What the tests share and nothing else imports: independent float64 NumPy references
(:mod:`.reference`), the suite's named tolerances (:mod:`.tolerances`) and the scripts some
tests run in subprocesses (:mod:`.parallel_check`, :mod:`.multiprocess_check`). One package
with a name of its own, so no module here can shadow an installed distribution."""
